"""Console settings (environment variables prefixed CONSOLE_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore")

    # The console reads the services' own APIs; it holds no second copy of their logic.
    ingest_url: str = "http://127.0.0.1:8080"
    classifier_url: str = "http://127.0.0.1:8081"
    notifier_url: str = "http://127.0.0.1:8082"
    request_timeout_s: float = Field(default=30.0, gt=0)
    # A signed-in session lasts this long without use; the key itself can be revoked sooner
    # (the key cache drops it within keys_refresh_s, and with it the session).
    session_idle_s: float = Field(default=8 * 3600, gt=0)
    # Behind TLS (a reverse proxy) set true: the session cookie then only travels over HTTPS.
    secure_cookies: bool = False
    keys_refresh_s: float = Field(default=2.0, gt=0)
    # Lag and topic end offsets are sampled this often and kept this long for the charts.
    sample_interval_s: float = Field(default=5.0, gt=0)
    sample_window_s: float = Field(default=3600.0, gt=0)
