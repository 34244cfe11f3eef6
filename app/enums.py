"""Job statuses and failure reasons, defined once."""

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def holds_reservation(self) -> bool:
        return self in (JobStatus.DISPATCHED, JobStatus.RUNNING)


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = (JobStatus.DISPATCHED, JobStatus.RUNNING)


class FailureReason(StrEnum):
    OOM = "oom"
    CAP_EXCEEDED = "cap_exceeded"
    TIMEOUT = "timeout"
    ERROR = "error"
    LAUNCH_ERROR = "launch_error"
    LOST = "lost"
    PREEMPTED = "preempted"  # stopped to make room for a bigger job; queued again, using no retry
