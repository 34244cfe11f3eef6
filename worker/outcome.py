"""How an attempt ended: from its exit code, the log's tail and what the supervisor did to it."""

import re
from enum import StrEnum
from pathlib import Path

from app.enums import FailureReason, JobStatus

# The frameworks' own out-of-memory messages (TensorFlow, PyTorch, JAX/XLA).
OOM_PATTERNS = re.compile(
    r"ResourceExhaustedError|OOM when allocating tensor|RESOURCE_EXHAUSTED: Out of memory"
    r"|CUDA out of memory|torch\.OutOfMemoryError|torch\.cuda\.OutOfMemoryError"
    r"|XlaRuntimeError: RESOURCE_EXHAUSTED|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation"
)


class Stopped(StrEnum):
    """Why the supervisor ended a process, if it did."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    CAP_EXCEEDED = "cap_exceeded"
    PREEMPTED = "preempted"


def classify(exit_code: int, log_tail: str, stopped: Stopped | None) -> tuple[JobStatus, FailureReason | None]:
    if stopped is Stopped.CANCELLED:
        return JobStatus.CANCELLED, None
    if stopped is Stopped.TIMEOUT:
        return JobStatus.FAILED, FailureReason.TIMEOUT
    if stopped is Stopped.CAP_EXCEEDED:
        return JobStatus.FAILED, FailureReason.CAP_EXCEEDED
    if stopped is Stopped.PREEMPTED:
        return JobStatus.FAILED, FailureReason.PREEMPTED
    if exit_code == 0:
        return JobStatus.SUCCEEDED, None
    if OOM_PATTERNS.search(log_tail):
        return JobStatus.FAILED, FailureReason.OOM
    return JobStatus.FAILED, FailureReason.ERROR


def read_tail(path: Path, size: int = 64 * 1024) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode(errors="replace")
