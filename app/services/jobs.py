"""Submitting, listing, reading and cancelling jobs."""

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from app.config import Settings
from app.constants import run_log_keys
from app.db.models import Job, Metric, Run, User
from app.db.session import lock_users
from app.enums import JobStatus
from app.errors import (
    Forbidden,
    JobFinished,
    JobNotFound,
    NoHistory,
    QuotaExceeded,
    RunNotFound,
    VramqError,
    VramUnsatisfiable,
)
from app.schemas import JobOut, JobSubmit
from app.services import sizing, transitions
from app.services.nodes import NodeSnapshot, live_nodes
from app.services.waiting import waiting_of


def to_out(
    job: Job, suggested_vram_mb: int | None = None, waiting: tuple[str, datetime | None] | None = None
) -> JobOut:
    queued = job.status is JobStatus.QUEUED
    return JobOut(
        pending_reason=(waiting[0] if waiting else "waiting for the scheduler") if queued else None,
        estimated_start=waiting[1] if waiting and queued else None,
        id=job.id,
        name=job.name,
        user=job.user.name,
        status=job.status,
        failure_reason=job.failure_reason,
        exit_code=job.exit_code,
        command=job.command,
        workdir=job.workdir,
        env=job.env,
        vram_mb=job.vram_mb,
        gpus=job.gpus,
        priority=job.priority,
        time_limit_s=job.time_limit_s,
        max_retries=job.max_retries,
        retry_on=job.retry_on,
        keras=job.keras,
        suggested_vram_mb=suggested_vram_mb,
        warnings=job.warnings,
        attempt=job.attempt,
        node=job.node,
        gpu_indices=job.gpu_indices,
        peak_vram_mb=job.peak_vram_mb,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def spec_of(job: Job) -> dict[str, Any]:
    """The submission that produced a job, as its submit body (what retrain sends again)."""
    spec = {
        "command": job.command,
        "vram_mb": job.vram_mb,
        "name": job.name,
        "workdir": job.workdir,
        "env": job.env,
        "gpus": job.gpus,
        "priority": job.priority,
        "time_limit_s": job.time_limit_s,
        "max_retries": job.max_retries,
        "retry_on": job.retry_on,
        "keras": job.keras,
    }
    return {key: value for key, value in spec.items() if value is not None}


def to_outs(session: Session, redis: Redis, jobs: Sequence[Job]) -> list[JobOut]:
    """Jobs as the API shows them: with the request their history suggests and, while queued, why."""
    peaks = sizing.past_peaks(session, sorted({job.fingerprint for job in jobs if job.fingerprint}))
    queued = [job.id for job in jobs if job.status is JobStatus.QUEUED]
    try:
        waiting = waiting_of(redis, queued)
    except RedisError:  # the jobs are in SQL; only why they wait is not known now
        waiting = dict.fromkeys(queued, ("unknown while Redis is unavailable", None))
    return [to_out(job, sizing.suggest(peaks.get(job.fingerprint or "", [])), waiting.get(job.id)) for job in jobs]


def check_satisfiable(nodes: Sequence[NodeSnapshot], vram_mb: int, gpus: int, margin_mb: int) -> None:
    """Refuse a request that no live node could hold even when idle; with no live node, accept and wait."""
    if not nodes:
        return
    rooms = (sizing.per_gpu_room([gpu.total_mb - margin_mb for gpu in node.gpus], gpus) for node in nodes)
    capacities = [room for room in rooms if room is not None]
    if not capacities:
        most = max(len(node.gpus) for node in nodes)
        raise VramUnsatisfiable(f"{gpus} GPUs requested; the largest live node has {most}")
    if vram_mb > max(capacities):
        raise VramUnsatisfiable(
            f"{vram_mb} MB per GPU requested; the most any live GPU can give is {max(capacities)} MB "
            f"(its total less the {margin_mb} MB safety margin)"
        )


@dataclass(frozen=True)
class Submission:
    """One job to queue for `user`; with `right_size`, its request becomes what its history suggests
    (retrain)."""

    user: User
    spec: JobSubmit
    right_size: bool = False


Submitted = tuple[Job, int | None]  # the queued job and the request its history suggests


def submit_many(
    session: Session, redis: Redis, submissions: Sequence[Submission], settings: Settings
) -> list[Submitted | VramqError]:
    """Validate each submission against the live GPUs, its history and its user's queued quota, and queue
    the valid ones; one refused submission (its VramqError in the result) does not refuse the others.
    A batch costs one history query, one quota query and one INSERT, whatever its size. With Redis down
    the live GPUs are unknown: the jobs are queued unchecked, with a warning that says so."""
    base_dir = Path.cwd()  # relative script paths resolve against this process's cwd
    fingerprints = [sizing.fingerprint(s.user.name, s.spec.command, s.spec.workdir, base_dir) for s in submissions]
    peaks = sizing.past_peaks(session, sorted(set(fingerprints)))
    try:
        nodes: list[NodeSnapshot] | None = live_nodes(redis)
    except RedisError:  # SQL is the source of truth: queue it, the scheduler dispatches once Redis is back
        nodes = None
    queued: dict[int, int] = {}
    if settings.quota_queued is not None:
        users = sorted({s.user.id for s in submissions})
        lock_users(session, users)  # another API process submitting for them waits: each counts the other's
        queued = dict(
            session.execute(
                select(Job.user_id, func.count())
                .where(Job.user_id.in_(users), Job.status == JobStatus.QUEUED)
                .group_by(Job.user_id)
            ).all()
        )
    plans: list[tuple[Submission, int | None] | VramqError] = []  # (submission, suggestion) or why refused
    rows: list[dict[str, Any]] = []  # the accepted jobs' columns, in the plans' order
    for submission, fingerprint in zip(submissions, fingerprints, strict=True):
        try:
            if settings.quota_queued is not None and queued.get(submission.user.id, 0) >= settings.quota_queued:
                raise QuotaExceeded(f"you already have {settings.quota_queued} queued jobs, the most the quota allows")
            suggested = sizing.suggest(peaks.get(fingerprint, []))
            rows.append(_job_columns(submission, fingerprint, suggested, nodes, settings.safety_margin_mb))
        except VramqError as refused:
            plans.append(refused)
            continue
        queued[submission.user.id] = queued.get(submission.user.id, 0) + 1
        plans.append((submission, suggested))
    # One multi-row INSERT ... RETURNING gives the ORM objects back in the rows' order.
    inserted = iter(
        session.scalars(insert(Job).returning(Job, sort_by_parameter_order=True), rows).all() if rows else []
    )
    callers: dict[int, User] = {}  # each caller once in this session, cached users being detached
    results: list[Submitted | VramqError] = []
    for plan in plans:
        if isinstance(plan, VramqError):
            results.append(plan)
            continue
        submission, suggested = plan
        job = next(inserted)
        if submission.user.id not in callers:
            callers[submission.user.id] = session.merge(submission.user, load=False)
        set_committed_value(job, "user", callers[submission.user.id])  # no query, nothing to flush
        results.append((job, suggested))
    return results


def submit(session: Session, redis: Redis, submission: Submission, settings: Settings) -> Submitted:
    """Queue one job, or raise why it is refused."""
    [result] = submit_many(session, redis, [submission], settings)
    if isinstance(result, VramqError):
        raise result
    return result


def _job_columns(
    submission: Submission,
    fingerprint: str,
    suggested: int | None,
    nodes: Sequence[NodeSnapshot] | None,
    margin_mb: int,
) -> dict[str, Any]:
    spec = submission.spec
    if submission.right_size and suggested is not None:
        spec = spec.model_copy(update={"vram_mb": suggested})
    warnings = []
    if spec.vram_mb == "auto":
        if suggested is None:
            raise NoHistory(
                "vram_mb 'auto' needs an earlier successful run of this command by you; give vram_mb in MiB"
            )
    elif suggested is not None and spec.vram_mb > sizing.WASTE_FACTOR * suggested:
        warnings.append(
            f"{spec.vram_mb} MB requested, more than {sizing.WASTE_FACTOR}x what earlier runs of this job needed "
            f"({suggested} MB with headroom); a smaller request starts sooner and leaves room for others"
        )
    vram_mb = spec.vram_mb if isinstance(spec.vram_mb, int) else suggested
    assert vram_mb is not None
    if nodes is None:
        warnings.append("not checked against the live GPUs (Redis is unavailable): it waits if none can hold it")
    else:
        check_satisfiable(nodes, vram_mb, spec.gpus, margin_mb)
    return {
        "user_id": submission.user.id,
        "name": spec.name,
        "command": spec.command,
        "workdir": spec.workdir,
        "env": spec.env,
        "vram_mb": vram_mb,
        "gpus": spec.gpus,
        "priority": spec.priority,
        "time_limit_s": spec.time_limit_s,
        "max_retries": spec.max_retries,
        "retry_on": [str(reason) for reason in spec.retry_on],
        "keras": spec.keras.model_dump(exclude_none=True) if spec.keras else None,
        "fingerprint": fingerprint,
        "warnings": warnings,
    }


def get(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    return job


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    user: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> Sequence[Job]:
    """Newest first; `before_id` is the cursor a previous page ended on."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Job.status == status)
    if user is not None:
        query = query.join(Job.user).where(User.name == user)
    if before_id is not None:
        query = query.where(Job.id < before_id)
    return session.scalars(query).all()


def cancel(session: Session, job_id: int, by: User) -> Job:
    """Queued or dispatched: cancelled now. Running: flagged; its worker stops the process group.
    Only the job's owner or an admin may cancel it."""
    job = get(session, job_id)
    if job.user_id != by.id and not by.admin:
        raise Forbidden(f"job {job_id} belongs to {job.user.name}; only they or an admin may cancel it")
    if job.status.terminal:
        raise JobFinished(f"job {job_id} has already ended: {job.status}")
    job.cancel_requested = True
    if job.status is JobStatus.QUEUED:
        transitions.cancel_queued(session, job_id)
    elif job.status is JobStatus.DISPATCHED:
        transitions.cancel_dispatched(session, job)
    session.flush()
    session.refresh(job)
    return job


def runs(session: Session, job_id: int) -> Sequence[Run]:
    get(session, job_id)
    return session.scalars(select(Run).where(Run.job_id == job_id).order_by(Run.attempt)).all()


def metrics(session: Session, job_id: int) -> Sequence[Metric]:
    get(session, job_id)
    query = select(Metric).where(Metric.job_id == job_id).order_by(Metric.attempt, Metric.epoch, Metric.id)
    return session.scalars(query).all()


def _run(session: Session, job_id: int, attempt: int | None) -> Run | None:
    """The given attempt of a job, or its latest."""
    query = select(Run).where(Run.job_id == job_id)
    if attempt is not None:
        query = query.where(Run.attempt == attempt)
    return session.scalars(query.order_by(Run.attempt.desc()).limit(1)).first()


def log_text(session: Session, redis: Redis, job_id: int, attempt: int | None = None) -> str:
    """The stdout and stderr of an attempt (default the latest that started); empty before any."""
    job = get(session, job_id)
    run = _run(session, job_id, attempt)
    if run is None:
        if attempt is not None:
            raise RunNotFound(f"job {job_id} has no attempt {attempt} (it is at attempt {job.attempt})")
        return ""
    return _read_log(redis, run, 0)[0].decode(errors="replace")


_READ_LOG_COPY = """
local start = tonumber(redis.call('get', KEYS[2]) or '0')
return {start, redis.call('getrange', KEYS[1], math.max(0, tonumber(ARGV[1]) - start), -1)}
"""


def _read_log(redis: Redis, run: Run, offset: int) -> tuple[bytes, int]:
    """An attempt's output from file offset `offset` on, and the offset after it: from its file when this
    machine has it, else from the copy its worker keeps in Redis (the job ran on another node)."""
    if run.log_path and Path(run.log_path).exists():
        with Path(run.log_path).open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        return chunk, offset + len(chunk)
    key, start_key = run_log_keys(run.job_id, run.attempt)
    # One atomic round trip: the start offset and the text after `offset` always belong to the same copy.
    start, copy = redis.eval(_READ_LOG_COPY, 2, key, start_key, offset)  # type: ignore[no-untyped-call]
    start = int(start)
    chunk = copy.encode() if isinstance(copy, str) else copy
    if offset < start:
        note = f"[vramq] {start - offset} bytes of this log are kept only on the node that ran it\n"
        return note.encode() + chunk, start + len(chunk)
    return chunk, offset + len(chunk)


def follow_log(
    sessions: sessionmaker[Session], redis: Redis, job_id: int, attempt: int | None = None, poll_s: float = 0.5
) -> Iterator[bytes]:
    """The output of an attempt as it is written, until the attempt ends and all of it was sent. Without
    an attempt, follows the job through its retries until it reaches a terminal status."""
    shown: int | None = None
    offset = 0
    while True:
        with sessions() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            run = _run(session, job_id, attempt)
        ended = status is None or status.terminal or (attempt is not None and run is not None and run.released_at)
        if run is not None and run.attempt != shown:
            if shown is not None:
                yield f"[vramq] --- attempt {run.attempt} ---\n".encode()
            shown, offset = run.attempt, 0
        if run is not None:
            chunk, offset = _read_log(redis, run, offset)
            if chunk:
                yield chunk
        if ended:
            return
        time.sleep(poll_s)
