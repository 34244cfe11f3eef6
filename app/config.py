"""The one settings object: every VRAMQ_* variable is read here and nowhere else."""

import socket
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.units import parse_gpu_spec


class Settings(BaseSettings):
    """Configuration of every vramq process; built once and passed in."""

    model_config = SettingsConfigDict(env_prefix="VRAMQ_", extra="ignore")

    home: Path = Path("./var")
    database_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 8000
    api_workers: int = Field(default=1, ge=1, description="API processes")
    access_log: bool = Field(default=False, description="log every HTTP request (uvicorn's access log)")
    gpus: str | None = None
    node: str = Field(default_factory=socket.gethostname)
    api_url: str = "http://127.0.0.1:8000"
    token: str | None = None

    slots: int = Field(default=4, ge=1, description="jobs one node runs at once")
    overhead_mb: int = Field(default=1024, ge=0, description="per-process VRAM outside the TF allocator")
    safety_margin_mb: int = Field(default=256, ge=0, description="VRAM per GPU never handed out")
    cap_tolerance_mb: int = Field(default=256, ge=0, description="watchdog slack above a reservation")
    cancel_grace_s: float = Field(default=5.0, gt=0, description="SIGTERM to SIGKILL")
    preempt_grace_s: float = Field(
        default=600.0, ge=0, description="a preempted Keras job's wait for its epoch to end and checkpoint"
    )
    dispatch_interval_s: float = Field(default=0.5, gt=0)
    fair_share_half_life_h: float = Field(default=24.0, gt=0, description="decay of past usage in fair share")
    quota_running: int | None = Field(default=None, ge=1, description="per user: jobs running at once")
    quota_reserved_mb: int | None = Field(default=None, ge=1, description="per user: VRAM reserved at once")
    quota_queued: int | None = Field(default=None, ge=1, description="per user: jobs waiting; more are refused")
    sample_interval_s: float = Field(default=0.5, gt=0, description="watchdog and log sampling")

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    @field_validator("gpus")
    @classmethod
    def _valid_gpu_spec(cls, spec: str | None) -> str | None:
        if spec:
            parse_gpu_spec(spec)
        return spec or None

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'vramq.db'}"

    @cached_property
    def simulated_gpus_mb(self) -> list[int] | None:
        """Sizes of the simulated GPUs, or None to ask NVML."""
        return parse_gpu_spec(self.gpus) if self.gpus else None

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def simulator_dir(self) -> Path:
        """Where simulated GPUs keep the memory each process 'uses' (one file per pid)."""
        return self.home / "simgpu" / self.node
