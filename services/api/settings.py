from __future__ import annotations

from pydantic import Field, SecretStr

from shared.settings import CommonSettings


class ApiSettings(CommonSettings):
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # The first administrator key, created (stored hashed) at start so a fresh installation can be used.
    bootstrap_api_key: SecretStr | None = None
    relay_batch_size: int = Field(default=500, ge=1)
    relay_poll_seconds: float = Field(default=0.5, gt=0)
    relay_enabled: bool = True
    csv_import_chunk_rows: int = Field(default=5000, ge=100)
    max_page_size: int = Field(default=500, ge=1)
