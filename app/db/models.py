"""SQLAlchemy 2 models of everything vramq records."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Index, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.enums import FailureReason, JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def str_enum(enum: type) -> Enum:
    """Stored as its value in a VARCHAR(16) (no native enum type to migrate), read back as the enum."""
    return Enum(enum, native_enum=False, length=16, values_callable=lambda members: [m.value for m in members])


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(default=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_order", "status", "priority", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[JobStatus] = mapped_column(str_enum(JobStatus), default=JobStatus.QUEUED)
    failure_reason: Mapped[FailureReason | None] = mapped_column(str_enum(FailureReason))
    exit_code: Mapped[int | None]
    command: Mapped[list[Any]]
    workdir: Mapped[str | None] = mapped_column(Text)
    env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    vram_mb: Mapped[int]
    gpus: Mapped[int] = mapped_column(default=1)
    priority: Mapped[int] = mapped_column(default=0)
    time_limit_s: Mapped[int | None]
    max_retries: Mapped[int] = mapped_column(default=0)
    retry_on: Mapped[list[Any]] = mapped_column(default=lambda: ["oom", "lost"])
    keras: Mapped[dict[str, Any] | None]  # per-job autolog settings: seed, early_stopping, ...
    fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)  # user + command + script hash
    warnings: Mapped[list[Any]] = mapped_column(default=list)
    attempt: Mapped[int] = mapped_column(default=1)
    node: Mapped[str | None] = mapped_column(String(128))
    gpu_indices: Mapped[list[Any] | None]
    peak_vram_mb: Mapped[int | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined")


class Run(Base):
    """One attempt of a job; its reservation lives from reserved_at to released_at."""

    __tablename__ = "runs"
    # History lookups (right-sizing, expected utilisation) read a fingerprint's newest runs from this index,
    # however many jobs with that fingerprint are queued.
    __table_args__ = (UniqueConstraint("job_id", "attempt"), Index("ix_runs_fingerprint", "fingerprint", "id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int]
    node: Mapped[str] = mapped_column(String(128))
    gpu_indices: Mapped[list[Any]]
    vram_mb: Mapped[int]
    fingerprint: Mapped[str | None] = mapped_column(String(64))  # the job's, copied at dispatch
    pid: Mapped[int | None]
    exit_code: Mapped[int | None]
    outcome: Mapped[JobStatus | None] = mapped_column(str_enum(JobStatus))
    failure_reason: Mapped[FailureReason | None] = mapped_column(str_enum(FailureReason))
    peak_vram_mb: Mapped[int | None]
    util: Mapped[float | None]  # mean measured GPU compute utilisation, 0..1
    log_path: Mapped[str | None] = mapped_column(Text)
    output_dir: Mapped[str | None] = mapped_column(Text)
    reserved_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    released_at: Mapped[datetime | None]


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_attempt", "job_id", "attempt", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    epoch: Mapped[int]
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float]
    time: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int]
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int]
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)  # at the best epoch
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the submission that produced it
    peak_vram_mb: Mapped[int | None]
    gpu_seconds: Mapped[float | None]
    seed: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(Base):
    """A movable name for one version of a model, e.g. `production`."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("name", "alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
