"""The soak of `make soak`, made small (3,000 clients, faults shortened, under five minutes): every service
as its own process through provider faults, SIGKILLs, a RabbitMQ and a PostgreSQL restart and a frozen
database connection; its audit (docs/reliability.md) must hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakConfig, print_audit, run_soak, write_result

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_a_short_soak_through_every_fault_passes_its_audit(tmp_path: Path) -> None:
    result = await run_soak(SoakConfig.for_tests(), tmp_path / "logs")
    write_result(result, tmp_path / "soak.md")

    print_audit(result.lines)
    print(f"report: {tmp_path / 'soak.md'}")
    violated = [f"{line.name}: {line.value:g} (bound {line.bound}) {line.note}" for line in result.violated()]
    assert not violated, "\n".join(violated)
