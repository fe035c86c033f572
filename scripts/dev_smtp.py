"""`python -m scripts.dev_smtp [--host H] [--port P]`: the mail sink `make run` starts for the reporter.

It prints every message it receives (the daily reports, headers and body) and stops cleanly, with exit
code 0, on SIGTERM or Ctrl-C. It is aiosmtpd's own debugging server, which `python -m aiosmtpd -n` also
runs, but that one dies of SIGTERM: `make run` then reported the sink as killed each time it stopped.
Development only: it accepts any mail from anyone and keeps none of it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiosmtpd.handlers import Debugging
from aiosmtpd.smtp import SMTP

DEV_SMTP_HOST = "127.0.0.1"
DEV_SMTP_PORT = 1025


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(lambda: SMTP(Debugging(sys.stdout)), host, port)
    print(f"development mail sink on smtp://{host}:{port}: every message is printed here", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
    print("development mail sink stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.dev_smtp", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEV_SMTP_HOST)
    parser.add_argument("--port", type=int, default=DEV_SMTP_PORT)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
