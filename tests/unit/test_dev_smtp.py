"""`scripts.dev_smtp`, the mail sink of `make run`: prints what it receives, stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from bench.chaos import free_port

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def connect_when_listening(port: int, within: float = 20.0) -> smtplib.SMTP:
    deadline = time.monotonic() + within
    while True:
        try:
            return smtplib.SMTP("127.0.0.1", port, timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_the_sink_prints_a_message_and_ends_with_code_0_when_stopped(stop: signal.Signals) -> None:
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "scripts.dev_smtp", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "reporter@local", "ops@local", "Daily report"
        message.set_content("sent: 3000")
        with connect_when_listening(port) as smtp:
            smtp.send_message(message)
        sink.send_signal(stop)
        out, _ = sink.communicate(timeout=20)
    finally:
        if sink.poll() is None:
            sink.kill()
    assert sink.returncode == 0, out
    assert f"mail sink on smtp://127.0.0.1:{port}" in out
    assert "Subject: Daily report" in out and "sent: 3000" in out
    assert out.rstrip().endswith("development mail sink stopped")
