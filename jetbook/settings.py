"""Configuration: flags win, then JETBOOK_* environment variables, then these defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_URL = "nats://127.0.0.1:4222"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JETBOOK_")

    nats_url: str | None = None  # None: `jetbook up` starts its own server
    data_dir: Path = Path(".jetbook")
    port: int = 4222  # embedded server port; 0 picks a free one
    replicas: int = 1  # stream replicas: 3 on a 3-node cluster
    log_level: str = "INFO"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "read_model.db"
