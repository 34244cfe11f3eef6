"""Request and response shapes of REST API v1 (DESIGN section 4)."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.enums import FailureReason, JobStatus


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: Annotated[list[str], Field(min_length=1)]
    vram_mb: Annotated[int, Field(gt=0, strict=True)]
    name: Annotated[str | None, Field(max_length=200)] = None
    workdir: str | None = None
    env: dict[str, str] = {}
    gpus: Annotated[int, Field(ge=1, strict=True)] = 1
    priority: Annotated[int, Field(strict=True)] = 0
    time_limit_s: Annotated[int | None, Field(gt=0, strict=True)] = None
    max_retries: Annotated[int, Field(ge=0, le=100, strict=True)] = 0

    @field_validator("command")
    @classmethod
    def _program_named(cls, command: list[str]) -> list[str]:
        if not command[0].strip():
            raise ValueError("the first element of command must name a program")
        return command

    @field_validator("workdir")
    @classmethod
    def _absolute_workdir(cls, workdir: str | None) -> str | None:
        if workdir is not None and not workdir.startswith("/"):
            raise ValueError("workdir must be an absolute path on the node")
        return workdir

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"not an environment variable name: {key!r}")
        return env


class JobOut(BaseModel):
    id: int
    name: str | None
    user: str
    status: JobStatus
    failure_reason: FailureReason | None
    exit_code: int | None
    command: list[str]
    workdir: str | None
    env: dict[str, str]
    vram_mb: int
    gpus: int
    priority: int
    time_limit_s: int | None
    max_retries: int
    attempt: int
    node: str | None
    gpu_indices: list[int] | None
    peak_vram_mb: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    node: str
    gpu_indices: list[int]
    vram_mb: int
    pid: int | None
    outcome: str | None
    exit_code: int | None
    failure_reason: FailureReason | None
    peak_vram_mb: int | None
    reserved_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    released_at: datetime | None


class MetricOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    epoch: int
    name: str
    value: float
    time: datetime


class GpuOut(BaseModel):
    node: str
    index: int
    uuid: str
    name: str
    total_mb: int
    used_mb: int
    free_mb: int
    reserved_mb: int
    foreign_mb: int
    available_mb: int
    simulated: bool
    jobs: list[int]


class ModelOut(BaseModel):
    name: str
    latest_version: int


class ModelVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    job_id: int
    attempt: int
    path: str
    sha256: str
    size_bytes: int
    metrics: dict[str, Any]
    created_at: datetime


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    admin: bool = False


class UserCreated(BaseModel):
    name: str
    token: str
    admin: bool
