"""The daily report: its figures as plain objects, and the e-mail made from them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from email.message import EmailMessage
from email.utils import format_datetime
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from shared.clock import utc_now
from shared.reports import ALL_STATUSES, FINAL_STATUSES, DailyReport, MailingFigures

__all__ = ["DailyReport", "MailingFigures", "render", "report_message_id", "subject"]


def report_message_id(day: date, domain: str) -> str:
    """The same for every attempt of a day, so a resend after a crash is recognisable as one report."""
    return f"<mailing-report-{day.isoformat()}@{domain}>"


def subject(report: DailyReport) -> str:
    totals = report.totals
    counts = ", ".join(f"{totals[s]} {s}" for s in FINAL_STATUSES)
    return f"Mailing report for {report.day.isoformat()}: {counts}"


@cache
def _templates() -> Environment:
    return Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(report: DailyReport, *, sender: str, recipients: Sequence[str], domain: str) -> EmailMessage:
    context = {
        "report": report,
        "totals": report.totals,
        "final": FINAL_STATUSES,
        "statuses": ALL_STATUSES,
    }
    message = EmailMessage()
    message["Subject"] = subject(report)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(utc_now())
    message["Message-ID"] = report_message_id(report.day, domain)
    message.set_content(_templates().get_template("report.txt").render(context))
    message.add_alternative(_templates().get_template("report.html").render(context), subtype="html")
    return message
