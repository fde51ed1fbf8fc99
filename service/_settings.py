"""Server settings: every field is a ``covserve-serve`` flag and a ``COVSERVE_*`` environment variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service._runtime import Device, available_cpus

__all__ = ["Settings"]

MIB = 1 << 20


class Settings(BaseSettings):
    """Runtime configuration of one server process (flags > environment > defaults)."""

    model_config = SettingsConfigDict(env_prefix="COVSERVE_", extra="forbid")

    repository: Path = Field(default=Path("models"), description="model repository to serve")
    host: str = Field(default="127.0.0.1", description="interface to bind")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 picks a free one)")
    device: Device = Field(default=Device.AUTO, description="auto | cpu | cuda")
    threads: int = Field(default_factory=available_cpus, ge=1, description="ONNX Runtime intra-op threads")
    workers: int = Field(default=2, ge=1, description="concurrent session.run calls")
    max_queue: int = Field(default=256, ge=1, description="requests waiting for a worker before 503")
    max_body_bytes: int = Field(default=16 * MIB, ge=1024, description="largest accepted request body")
    max_rows: int = Field(default=4096, ge=1, description="largest accepted batch of rows per request")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated bearer tokens; empty disables auth"
    )
    protect_metrics: bool = Field(default=False, description="require a key on /metrics too")
    poll_seconds: float = Field(default=0.0, ge=0, description="reload changed versions this often (0: off)")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value
