"""The reporter from the command line: show a day's report, send it by hand."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from services.reporter.cli import run
from services.reporter.settings import ReporterSettings

pytestmark = pytest.mark.integration


class RecordingMailer:
    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> None:
        self.sent.append(message)


async def test_show_prints_the_days_report_without_sending(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    mailer = RecordingMailer()
    settings = ReporterSettings(database_url=database_url)
    assert await run(["show", "--day", "2026-11-29"], settings, mailer) == 0
    assert "2026-11-29" in capsys.readouterr().out
    assert not mailer.sent


async def test_send_sends_the_days_report_now(database_url: str) -> None:
    mailer = RecordingMailer()
    settings = ReporterSettings(database_url=database_url)
    assert await run(["send", "--day", "2026-11-29"], settings, mailer) == 0
    (message,) = mailer.sent
    assert "2026-11-29" in message["Subject"]


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01", "2026-02-30"])
async def test_a_day_without_bounds_is_a_usage_error_not_a_traceback(
    database_url: str, day: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        await run(["show", "--day", day], ReporterSettings(database_url=database_url), RecordingMailer())
    assert ended.value.code == 2
    assert "--day" in capsys.readouterr().err
