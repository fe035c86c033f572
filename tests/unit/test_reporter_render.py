from __future__ import annotations

from datetime import date

import pytest

from services.reporter.report import DailyReport, MailingFigures, render, subject

pytestmark = pytest.mark.unit


def a_report() -> DailyReport:
    return DailyReport(
        date(2026, 11, 25),
        "Europe/Moscow",
        [
            MailingFigures(
                7, "Black <Friday> " + "sale " * 30, {"sent": 10, "failed": 2}, {"sent": 50, "pending": 5}
            ),
            MailingFigures(9, None, {"expired": 1, "cancelled": 3}, {"expired": 1, "cancelled": 3}),
        ],
    )


def test_subject_names_the_day_and_the_totals_by_final_status() -> None:
    assert subject(a_report()) == "Mailing report for 2026-11-25: 10 sent, 2 failed, 1 expired, 3 cancelled"


def test_report_mail_has_a_plain_text_and_an_escaped_html_part() -> None:
    message = render(a_report(), sender="r@example.org", recipients=["a@x.org", "b@x.org"], domain="ex.org")
    assert message["Message-ID"] == "<mailing-report-2026-11-25@ex.org>"
    assert message["To"] == "a@x.org, b@x.org"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    text = plain.get_content()
    assert "Mailing 7: Black <Friday> sale" in text
    assert "that day: 10 sent, 2 failed, 0 expired, 0 cancelled" in text
    assert "all time: 5 pending, 0 queued, 0 retrying, 50 sent" in text
    assert "Mailing 9: (mailing not found)" in text
    assert "sale " * 20 not in text  # long texts are cut
    page = html.get_content()
    assert "Black &lt;Friday&gt;" in page and "<Friday>" not in page


def test_a_day_without_outcomes_still_makes_a_report() -> None:
    message = render(DailyReport(date(2026, 11, 25), "UTC", []), sender="r@x", recipients=["a@x"], domain="x")
    assert message["Subject"] == "Mailing report for 2026-11-25: 0 sent, 0 failed, 0 expired, 0 cancelled"
    plain = message.get_body(("plain",))
    assert plain is not None and "No message reached a final status" in plain.get_content()
