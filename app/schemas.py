"""Request and response shapes of REST API v1 (DESIGN section 4)."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError

from app.enums import FailureReason, JobStatus

# The largest INTEGER PostgreSQL stores: ids, sizes and times past it are refused here (422) instead of failing
# in the database, which would fail every submission of the same group commit with a 500.
SQL_INT_MAX = 2**31 - 1


def _one_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One message for the request, not one per member of its union ("constrained-int", "literal['auto']")."""
    try:
        return handler(value)
    except ValidationError:
        message = 'should be a whole number of MiB from 1 to {most}, or "auto"'
        raise PydanticCustomError("vram_request", message, {"most": SQL_INT_MAX}) from None


VramRequest = Annotated[
    Annotated[int, Field(gt=0, le=SQL_INT_MAX, strict=True)] | Literal["auto"], WrapValidator(_one_error)
]


class EarlyStoppingArgs(BaseModel):
    """keras.callbacks.EarlyStopping's own arguments."""

    model_config = ConfigDict(extra="forbid")

    monitor: str | None = None
    min_delta: float | None = None
    patience: Annotated[int, Field(ge=0)] | None = None
    mode: Literal["auto", "min", "max"] | None = None
    baseline: float | None = None
    restore_best_weights: bool | None = None
    start_from_epoch: Annotated[int, Field(ge=0)] | None = None


class ReduceLROnPlateauArgs(BaseModel):
    """keras.callbacks.ReduceLROnPlateau's own arguments."""

    model_config = ConfigDict(extra="forbid")

    monitor: str | None = None
    factor: Annotated[float, Field(gt=0, lt=1)] | None = None
    patience: Annotated[int, Field(ge=0)] | None = None
    mode: Literal["auto", "min", "max"] | None = None
    min_delta: float | None = None
    cooldown: Annotated[int, Field(ge=0)] | None = None
    min_lr: Annotated[float, Field(ge=0)] | None = None


class KerasSettings(BaseModel):
    """What autolog adds to every Model.fit of the job."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = None
    early_stopping: EarlyStoppingArgs | None = None
    reduce_lr_on_plateau: ReduceLROnPlateauArgs | None = None
    monitor: str | None = None


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: Annotated[list[str], Field(min_length=1)]
    vram_mb: VramRequest
    name: Annotated[str | None, Field(max_length=200)] = None
    workdir: str | None = None
    env: dict[str, str] = {}
    gpus: Annotated[int, Field(ge=1, le=SQL_INT_MAX, strict=True)] = 1
    priority: Annotated[int, Field(ge=-SQL_INT_MAX - 1, le=SQL_INT_MAX, strict=True)] = 0
    time_limit_s: Annotated[int | None, Field(gt=0, le=SQL_INT_MAX, strict=True)] = None
    max_retries: Annotated[int, Field(ge=0, le=100, strict=True)] = 0
    retry_on: list[FailureReason] = [FailureReason.OOM, FailureReason.LOST]
    keras: KerasSettings | None = None

    @field_validator("retry_on")
    @classmethod
    def _retryable(cls, reasons: list[FailureReason]) -> list[FailureReason]:
        if FailureReason.LAUNCH_ERROR in reasons:
            raise ValueError("launch_error is never retried: another attempt cannot fix the command")
        return sorted(set(reasons))

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
            raise ValueError("must be an absolute path on the node")
        return workdir

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"not an environment variable name: {key!r}")
        return env

    @field_validator("command", "name", "workdir", "env")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """A process's arguments, environment and paths cannot hold NUL, nor can PostgreSQL's text."""
        texts = value if isinstance(value, list) else value.values() if isinstance(value, dict) else [value]
        if any(text is not None and "\0" in text for text in texts):
            raise ValueError("must not contain NUL characters")
        return value


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
    retry_on: list[FailureReason]
    keras: dict[str, Any] | None
    suggested_vram_mb: int | None = None
    warnings: list[str] = []
    pending_reason: str | None = None  # while queued: what it waits for
    estimated_start: datetime | None = None  # while queued, when it can be known
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
    util: float | None  # mean GPU compute utilisation measured over the attempt, once it has ended
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


class ForeignProcess(BaseModel):
    pid: int
    user: str | None
    used_mb: int


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
    load: float = 0.0  # expected compute load: its jobs' utilisations (measured, else history); cap 1.7
    processes: list[ForeignProcess] = []  # processes vramq did not start, with their Unix user


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
    spec: dict[str, Any]
    peak_vram_mb: int | None
    gpu_seconds: float | None
    seed: int | None
    aliases: list[str] = []
    created_at: datetime


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(ge=1, le=SQL_INT_MAX, strict=True)]


class AliasOut(BaseModel):
    name: str
    alias: str
    version: int


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    admin: bool = False


class UserCreated(BaseModel):
    name: str
    token: str
    admin: bool
