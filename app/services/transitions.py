"""Every job status change goes through here: compare-and-set updates that refuse illegal moves.

A transition names the status (and attempt) it expects to leave; when another process got there first
the update touches no row and the caller learns it lost the race. That is what makes a job reach
exactly one terminal state and release its reservation exactly once (DESIGN section 3, invariant 4).
"""

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.models import Job, Run, utcnow
from app.enums import ACTIVE, FailureReason, JobStatus
from app.errors import IllegalTransition

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.DISPATCHED, JobStatus.CANCELLED}),
    JobStatus.DISPATCHED: frozenset({JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
}

# Failures that another attempt cannot fix.
NOT_RETRIED = frozenset({FailureReason.LAUNCH_ERROR})


def move(
    session: Session,
    job_id: int,
    sources: Iterable[JobStatus],
    target: JobStatus,
    *,
    at_attempt: int | None = None,
    **values: Any,
) -> bool:
    """Move a job from one of `sources` to `target`; False when it was not in them (someone else won)."""
    sources = tuple(sources)
    for source in sources:
        if target not in ALLOWED.get(source, frozenset()):
            raise IllegalTransition(f"job {job_id}: {source} -> {target}")
    where = [Job.id == job_id, Job.status.in_(sources)]
    if at_attempt is not None:
        where.append(Job.attempt == at_attempt)
    result = session.execute(update(Job).where(*where).values(status=target, **values))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def dispatch(session: Session, job: Job, node: str, gpu_indices: list[int]) -> bool:
    """Reserve `job.vram_mb` on each of `gpu_indices` of `node`; the caller holds the ledger lock."""
    now = utcnow()
    moved = move(
        session,
        job.id,
        [JobStatus.QUEUED],
        JobStatus.DISPATCHED,
        at_attempt=job.attempt,
        node=node,
        gpu_indices=gpu_indices,
        dispatched_at=now,
    )
    if moved:
        session.add(
            Run(
                job_id=job.id,
                attempt=job.attempt,
                node=node,
                gpu_indices=gpu_indices,
                vram_mb=job.vram_mb,
                fingerprint=job.fingerprint,
                reserved_at=now,
            )
        )
    return moved


def start(session: Session, job_id: int, attempt: int, *, pid: int, log_path: str, output_dir: str) -> bool:
    now = utcnow()
    if not move(session, job_id, [JobStatus.DISPATCHED], JobStatus.RUNNING, at_attempt=attempt, started_at=now):
        return False
    session.execute(
        update(Run)
        .where(Run.job_id == job_id, Run.attempt == attempt)
        .values(pid=pid, started_at=now, log_path=log_path, output_dir=output_dir)
    )
    return True


def finish(
    session: Session,
    job: Job,
    attempt: int,
    target: JobStatus,
    *,
    reason: FailureReason | None = None,
    exit_code: int | None = None,
    peak_vram_mb: int | None = None,
    sources: tuple[JobStatus, ...] = ACTIVE,
    next_vram_mb: int | None = None,
) -> JobStatus | None:
    """End an attempt and release its reservation, once. A failure the job retries on (its retry_on,
    by default oom and lost) with retries left is queued again, with `next_vram_mb` when given; so is a
    preempted attempt, always, using no retry.

    Returns the status the job reached, or None when the attempt had already ended.
    """
    now = utcnow()
    if retries(session, job, attempt, target, reason):
        values = _requeue_values(attempt, reason, exit_code, peak_vram_mb)
        if next_vram_mb is not None:
            values["vram_mb"] = next_vram_mb
        reached = JobStatus.QUEUED
    else:
        values = {
            "failure_reason": reason,
            "exit_code": exit_code,
            "peak_vram_mb": peak_vram_mb,
            "finished_at": now,
        }
        reached = target
    sources = tuple(source for source in sources if reached in ALLOWED[source])
    moved = move(session, job.id, sources, reached, at_attempt=attempt, **values)
    if not moved:
        return None
    _close_run(session, job.id, attempt, now, target, reason, exit_code, peak_vram_mb)
    return reached


def retries(session: Session, job: Job, attempt: int, target: JobStatus, reason: FailureReason | None) -> bool:
    if target is not JobStatus.FAILED or reason is None:
        return False
    if reason is FailureReason.PREEMPTED:
        return True
    if reason in NOT_RETRIED or reason not in job.retry_on:
        return False
    preempted = session.scalar(
        select(func.count()).where(Run.job_id == job.id, Run.failure_reason == FailureReason.PREEMPTED)
    )
    return attempt - (preempted or 0) <= job.max_retries


def _requeue_values(
    attempt: int, reason: FailureReason | None, exit_code: int | None, peak_vram_mb: int | None
) -> dict[str, Any]:
    return {
        "attempt": attempt + 1,
        "failure_reason": reason,
        "exit_code": exit_code,
        "peak_vram_mb": peak_vram_mb,
        "node": None,
        "gpu_indices": None,
        "dispatched_at": None,
        "started_at": None,
    }


def _close_run(
    session: Session,
    job_id: int,
    attempt: int,
    now: datetime,
    outcome: JobStatus,
    reason: FailureReason | None,
    exit_code: int | None,
    peak_vram_mb: int | None,
) -> None:
    session.execute(
        update(Run)
        .where(Run.job_id == job_id, Run.attempt == attempt, Run.released_at.is_(None))
        .values(
            outcome=outcome,
            failure_reason=reason,
            exit_code=exit_code,
            peak_vram_mb=peak_vram_mb,
            finished_at=now,
            released_at=now,
        )
    )


def cancel_queued(session: Session, job_id: int) -> bool:
    return move(session, job_id, [JobStatus.QUEUED], JobStatus.CANCELLED, finished_at=utcnow())


def cancel_dispatched(session: Session, job: Job) -> bool:
    """A dispatched job has no process yet: cancel it and release its reservation at once."""
    reached = finish(session, job, job.attempt, JobStatus.CANCELLED, sources=(JobStatus.DISPATCHED,))
    return reached is not None
