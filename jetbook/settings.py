"""Configuration that is not a command-line flag.

Each flag of `jetbook` also reads its JETBOOK_* environment variable (typer's
`envvar`), so the flags are the one place their defaults live; this holds the
rest.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_URL = "nats://127.0.0.1:4222"  # where `jetbook up` puts its embedded server by default


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JETBOOK_")

    log_level: str = "INFO"
