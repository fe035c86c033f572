import uvloop

from services.probe_stub.app import build_probe_stub
from services.probe_stub.settings import ProbeStubSettings
from shared.logging import configure_logging
from shared.service import serve


def main() -> None:
    settings = ProbeStubSettings()
    configure_logging("probe_stub", json=settings.log_json, level=settings.log_level)
    uvloop.run(serve(build_probe_stub(settings)))
