from __future__ import annotations

from email.message import EmailMessage
from typing import Protocol

import aiosmtplib
from loguru import logger

from services.reporter.settings import ReporterSettings


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpMailer:
    def __init__(self, settings: ReporterSettings) -> None:
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        s = self.settings
        refused, _ = await aiosmtplib.send(
            message,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username or None,
            password=s.smtp_password.get_secret_value() or None,
            use_tls=s.smtp_tls,
            # None: STARTTLS whenever the server offers it (never a password in the clear when it can
            # be avoided); True: required.
            start_tls=True if s.smtp_starttls else None,
            timeout=s.smtp_timeout_seconds,
        )
        for recipient, (code, reply) in refused.items():
            logger.warning("the SMTP server refused recipient {}: {} {}", recipient, code, reply)
