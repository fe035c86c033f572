"""`python -m services.reporter show|send --day YYYY-MM-DD`: one day's report from the command line.

`show` prints the report (the text part of the e-mail, the same figures) without sending it; `send`
sends it now, an explicit operator re-send outside the schedule and its day lease, logged as such.
"""

from __future__ import annotations

import argparse
from datetime import date

from loguru import logger

from services.reporter.mailer import Mailer, SmtpMailer
from services.reporter.report import render
from services.reporter.settings import ReporterSettings
from shared.db import make_engine
from shared.reports import FIRST_DAY, LAST_DAY, DailyReport, daily_report


def local_day(text: str) -> date:
    """YYYY-MM-DD, a day whose bounds every timezone has."""
    day = date.fromisoformat(text)
    if not FIRST_DAY <= day <= LAST_DAY:
        raise argparse.ArgumentTypeError(f"{text}: a day from {FIRST_DAY} to {LAST_DAY}")
    return day


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m services.reporter", description=__doc__)
    commands = cli.add_subparsers(dest="command", required=True)
    for name, text in (
        ("show", "print a day's report without sending it"),
        ("send", "send a day's report now"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--day", type=local_day, required=True, help="YYYY-MM-DD, local day")
    return cli


async def load(settings: ReporterSettings, day: date) -> DailyReport:
    engine = make_engine(settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await daily_report(conn, day, settings.timezone)
    finally:
        await engine.dispose()


def as_text(report: DailyReport, settings: ReporterSettings) -> str:
    message = render(
        report, sender=settings.mail_from, recipients=settings.mail_to, domain=settings.message_id_domain
    )
    text = message.get_body(("plain",))
    if text is None:
        raise ValueError("the report has no plain-text part")
    return f"Subject: {message['Subject']}\n\n{text.get_content()}"


async def run(argv: list[str], settings: ReporterSettings, mailer: Mailer | None = None) -> int:
    args = parser().parse_args(argv)
    report = await load(settings, args.day)
    if args.command == "show":
        print(as_text(report, settings))
        return 0
    message = render(
        report, sender=settings.mail_from, recipients=settings.mail_to, domain=settings.message_id_domain
    )
    await (mailer or SmtpMailer(settings)).send(message)
    logger.bind(day=str(args.day), recipients=list(settings.mail_to), operator_resend=True).warning(
        "daily report sent by hand from the command line (an explicit operator re-send)"
    )
    return 0
