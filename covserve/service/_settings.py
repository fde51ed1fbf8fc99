"""Server settings: every field is a ``covserve-serve`` flag and a ``COVSERVE_*`` environment variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from covserve.service._runtime import Device, available_cpus

__all__ = ["Settings"]

MIB = 1 << 20
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""Hosts on which an unauthenticated repository API is reachable from this machine only."""


class Settings(BaseSettings):
    """Runtime configuration of one server process (flags > environment > defaults)."""

    model_config = SettingsConfigDict(env_prefix="COVSERVE_", extra="forbid")

    repository: Path = Field(default=Path("models"), description="model repository to serve")
    host: str = Field(default="127.0.0.1", description="interface to bind")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 picks a free one)")
    device: Device = Field(default=Device.AUTO, description="auto | cpu | cuda")
    threads: int = Field(default_factory=available_cpus, ge=1, description="ONNX Runtime intra-op threads")
    workers: int = Field(default=2, ge=1, description="concurrent session.run calls")
    max_queue: int = Field(
        default=256,
        ge=1,
        description="requests admitted beyond --workers (reading, parsing or queued) before 503",
    )
    max_body_bytes: int = Field(
        default=16 * MIB,
        ge=1024,
        description="largest accepted request body, in bytes (a model's own limit, from its width and "
        "--max-rows, is often lower)",
    )
    max_buffered_bytes: int = Field(
        default=64 * MIB,
        ge=1024,
        description="request bodies read or parsed at once, in bytes; a request beyond it is a 503 "
        "before its body is read",
    )
    body_timeout_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="longest wait for a request body, in seconds (then 408)"
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="longest wait for a request's headers from its first byte, in seconds (then 408 and "
        "the connection is closed)",
    )
    idle_timeout_seconds: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="a connection with no request in flight, a fresh one included, is closed after this "
        "many seconds",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="open connections beyond this are answered 503 and closed (the open-file limit is "
        "raised to fit)",
    )
    max_rows: int = Field(default=4096, ge=1, description="largest accepted batch of rows per request")
    batching: bool = Field(
        default=True,
        description="dynamic batching: a request runs at once when a worker is free, and requests that "
        "arrive while every worker is busy are merged into the next run (--no-batching: every request "
        "runs alone)",
    )
    max_batch_size: int = Field(
        default=1024,
        ge=1,
        description="dynamic batching: most rows merged into one session.run (a larger request runs alone)",
    )
    max_queue_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="dynamic batching: hold waiting requests until --max-batch-size rows or this many ms "
        "have passed, for fuller batches at a latency cost (0: run as soon as a worker is free)",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="comma-separated bearer tokens; none disables auth (on a command line they show in the "
        "process list: prefer --api-key-file or COVSERVE_API_KEYS)",
    )
    api_key_file: Path | None = Field(
        default=None, description="file of bearer tokens, one per line (# comments); adds to --api-keys"
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="comma-separated bearer tokens for the repository API (index, load, unload); without "
        "any, that API is open only on a loopback --host with no --api-keys, and refused otherwise",
    )
    admin_key_file: Path | None = Field(
        default=None, description="file of admin tokens, one per line (# comments); adds to --admin-keys"
    )
    protect_metrics: bool = Field(default=False, description="require a key on /metrics too")
    access_log: bool = Field(
        default=True, description="one JSON line per request on the covserve.access logger"
    )
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's OpenTelemetry spans, metrics and logs through the configured providers "
        "(see FASTAPI_OTEL_AUTO_CONFIGURE); off skips the per-request check",
    )
    poll_seconds: float = Field(default=0.0, ge=0, description="reload changed versions this often (0: off)")

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("api_key_file", "admin_key_file")
    @classmethod
    def _key_file_has_keys(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read_key_file(value)
        return value

    def bearer_keys(self) -> list[str]:
        """Every accepted token: ``api_keys`` plus the lines of ``api_key_file``; empty means no auth."""
        from_file = _read_key_file(self.api_key_file) if self.api_key_file is not None else []
        return [*self.api_keys, *from_file]

    def admin_bearer_keys(self) -> list[str]:
        """The repository API's tokens: ``admin_keys`` plus the lines of ``admin_key_file``."""
        from_file = _read_key_file(self.admin_key_file) if self.admin_key_file is not None else []
        return [*self.admin_keys, *from_file]

    def admin_api_open(self) -> bool:
        """Whether the repository API needs no key: no admin keys, no API keys, a loopback ``host``."""
        return not self.admin_bearer_keys() and not self.bearer_keys() and self.host in LOOPBACK_HOSTS


def _read_key_file(path: Path) -> list[str]:
    """Non-blank, non-``#`` lines of ``path``, stripped; ``ValueError`` naming the file otherwise."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read API key file {str(path)!r}: {error}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ValueError(f"API key file {str(path)!r} has no keys (one per line, '#' starts a comment)")
    return keys
