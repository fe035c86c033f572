"""`python -m bench.sender_overhead [messages]`: the sender's own work per message, without HTTP.

The sender runs as in `bench.sender` (same seeding, settings and 100 callers) against a provider that
answers at once, in-process. What is left is everything around the call: consume, claim, checks,
pacing, breaker, batched status write, `message.finalized` event, ack.

`python -m bench.sender_overhead --instructions [messages]` runs that twice under
`valgrind --tool=callgrind` (Debian's `valgrind`), for N and 2N messages at once, and prints the
difference per message: start-up cancels out, and instruction counts do not move with the host's load
the way seconds do (+-15% here), so a change of a few percent in the sender's hot path shows. It takes
about three minutes for the default 3,000 messages.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid

import uvloop

from bench.sender import AMQP_URL, sender_rate
from services.sender.checks import Claim
from services.sender.http import HttpClient
from services.sender.provider import AnswerHook
from shared.broker import connect
from shared.domain.retry import ProviderResult, classify_response
from shared.logging import configure_logging
from shared.topology import Topology, declare, delete

DEFAULT_MESSAGES = 3000
_OK = classify_response(200, b'{"code":0,"message":"OK"}')
_COLLECTED = re.compile(r"Collected : (\d+)")
VALGRIND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")


class InstantProvider:
    """Accepts every message at once; like a real call, it lets the event loop run once."""

    def __init__(self, client: HttpClient, on_answer: AnswerHook) -> None:
        self.on_answer = on_answer

    async def send(self, claim: Claim, text: str, limit_seconds: float | None = None) -> ProviderResult:
        await asyncio.sleep(0)
        self.on_answer("ok", 0.001)
        return _OK


async def rate(messages: int) -> float:
    configure_logging("bench", level="WARNING")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    topology = Topology(namespace)
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await declare(channel, topology)
        try:
            return await sender_rate("http://127.0.0.1:9", "", messages, 100, namespace, InstantProvider)
        finally:
            await delete(channel, topology)


def instructions(messages: int) -> float:
    """Instructions a message: the difference of runs of `messages` and twice as many, run side by side."""
    runs = [
        subprocess.Popen(
            [*VALGRIND, sys.executable, "-m", "bench.sender_overhead", str(n)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (messages, 2 * messages)
    ]
    counts = []
    for run in runs:
        _, err = run.communicate()
        found = _COLLECTED.search(err)
        if run.returncode != 0 or found is None:
            raise RuntimeError(f"callgrind run failed ({run.returncode}):\n{err[-2000:]}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / messages


def main() -> None:
    args = sys.argv[1:]
    counting = "--instructions" in args
    numbers = [a for a in args if a != "--instructions"]
    messages = int(numbers[0]) if numbers else DEFAULT_MESSAGES
    if counting:
        print(f"sender without HTTP: {instructions(messages):,.0f} instructions a message")
    else:
        print(f"sender without HTTP: {uvloop.run(rate(messages)):,.0f} messages/s")


if __name__ == "__main__":
    main()
