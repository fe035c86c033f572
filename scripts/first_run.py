"""Run by `make run` before the services start: in development, makes sure the admin API key and the
session secret exist in the git-ignored local state directory, then prints every address, and the key
itself the first time only. Production settings get the addresses and nothing invented."""

from __future__ import annotations

from services.api.local_state import ADMIN_KEY_FILE, ensure_admin_key, ensure_session_secret
from services.api.settings import DEV_OIDC_ISSUER, ApiSettings
from services.probe_stub.settings import ProbeStubSettings
from services.reporter.settings import ReporterSettings

RABBITMQ_UI = "http://127.0.0.1:15672"


def report(settings: ApiSettings, probe: ProbeStubSettings, reporter: ReporterSettings) -> str:
    api = f"http://{settings.api_host}:{settings.api_port}"
    oidc = settings.oidc()
    lines = [
        f"Mailing service ({settings.environment})",
        f"  REST API          {api}/api/v1",
        f"  Swagger UI        {api}/docs/",
        f"  admin UI          {settings.public_url}/admin/",
    ]
    if oidc is not None and oidc.development:
        lines.append(
            f"  sign-in           {DEV_OIDC_ISSUER}  DEVELOPMENT-ONLY provider: users admin, operator, viewer"
        )
    elif oidc is not None:
        lines.append(f"  sign-in           {oidc.issuer}")
    else:
        lines.append("  sign-in           off: no MAILING_OIDC_ISSUER (the REST API takes API keys)")
    lines += [
        f"  probe stand-in    http://{probe.host}:{probe.port}",
        f"  mail sink         smtp://{reporter.smtp_host}:{reporter.smtp_port} (reports are printed below)",
        f"  RabbitMQ UI       {RABBITMQ_UI} (guest/guest, with the management plugin)",
        "",
    ]
    key_file = settings.local_state_dir / ADMIN_KEY_FILE
    if settings.bootstrap_api_key is not None:
        lines.append("  admin API key     MAILING_BOOTSTRAP_API_KEY (your environment or .env)")
    else:  # development: production settings without a key do not load at all
        key, created = ensure_admin_key(settings.local_state_dir)
        if created:
            lines += [
                f"  admin API key     {key}",
                f"                    shown this once; kept in {key_file} (make demo reads it)",
            ]
        else:
            lines.append(f"  admin API key     in {key_file}")
        lines.append(
            f'  try               curl -H "Authorization: Bearer $(cat {key_file})" {api}/api/v1/mailings'
        )
    return "\n".join(lines)


def main() -> int:
    settings = ApiSettings()
    if settings.development and settings.session_secret is None:
        ensure_session_secret(settings.local_state_dir)
    print(report(settings, ProbeStubSettings(), ReporterSettings()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
