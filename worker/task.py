"""The RQ task: run one attempt of a job, supervise it, record how it ended."""

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from sqlalchemy import Engine, Update, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, configure_mappers

from app.config import Settings
from app.constants import (
    NODE_PGIDS_KEY,
    RUN_HEARTBEAT_KEY,
    RUN_HEARTBEAT_TTL_S,
    RUN_LOAD_KEY,
    RUN_LOAD_SAMPLES,
    RUN_LOG_KEEP_BYTES,
    RUN_LOG_MAX_BYTES,
    RUN_LOG_TTL_S,
    RUN_PREEMPT_KEY,
    RUN_PROGRESS_KEY,
    run_log_keys,
)
from app.db.models import Job, Run, utcnow
from app.db.session import make_engine, make_sessionmaker, transaction
from app.enums import FailureReason, JobStatus
from app.services import jobs, models, progress, sizing, transitions
from app.services.nodes import live_nodes
from worker import metrics
from worker.context import WorkerContext
from worker.launcher import STOPPED_AT_CHECKPOINT, LaunchError, LaunchSpec, launch, signal_group, stop_group
from worker.outcome import Stopped, classify, read_tail

log = logging.getLogger(__name__)
STOP_FILE = "stop"  # in the attempt's directory: appears when the job should stop at its next checkpoint

_prepared: tuple[Settings, Engine] | None = None  # set by prepare(), in the worker before it forks


def prepare(settings: Settings) -> None:
    """What every job of this worker would otherwise build again in its forked work horse, done once
    before the forks: the settings, the ORM's mappers, and an engine whose dialect has met the database
    (server version and types) with the job lookup's SQL compiled. About 30 ms of each job's start on
    PostgreSQL. The engine keeps no connection across the fork: each work horse opens its own."""
    global _prepared
    configure_mappers()
    engine = make_engine(settings)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            session.get(Job, 0)
    except SQLAlchemyError as exc:  # down for now: each job meets the database itself, as without this
        log.warning("database not reachable before the first job: %s", exc)
    engine.dispose()
    _prepared = (settings, engine)


def run_job(job_id: int, attempt: int) -> str:
    """RQ entry point: the message carries ids only; everything else is read from SQL."""
    context = WorkerContext.create(*_prepared) if _prepared else WorkerContext.create(Settings())
    try:
        return execute(context, job_id, attempt)
    finally:
        context.close()


@dataclass
class LogMirror:
    """Copies what the attempt's log file gained since the last call into Redis (RUN_LOG_KEY), so that the
    API can serve the log from any machine. Past `limit` bytes the copy restarts with the newest half."""

    redis: Redis
    job_id: int
    attempt: int
    path: Path
    limit: int = RUN_LOG_MAX_BYTES
    copied: int = 0  # the file offset copied up to
    first: int = 0  # the file offset the copy starts at (RUN_LOG_FROM_KEY; 0 while absent)

    def sync(self, limit: int | None = None, keep: int | None = None) -> None:
        """Copy what is new; past `limit` bytes (default: the mirror's) restart the copy with the newest
        `keep` (default: half the limit)."""
        limit = self.limit if limit is None else limit
        keep = limit // 2 if keep is None else keep
        size = self.path.stat().st_size if self.path.exists() else 0
        if size <= self.copied and self.copied - self.first <= limit:
            return
        key, start_key = run_log_keys(self.job_id, self.attempt)
        grow = size - self.first <= limit
        start = self.copied if grow else size - keep
        with self.path.open("rb") as handle:
            handle.seek(start)
            chunk = handle.read(size - start)
        with self.redis.pipeline() as pipe:  # MULTI: a reader never sees the new text with the old start
            if grow:
                pipe.append(key, chunk)
            else:
                pipe.set(key, chunk)
                pipe.set(start_key, start)
                self.first = start
            pipe.expire(key, RUN_LOG_TTL_S)
            pipe.expire(start_key, RUN_LOG_TTL_S)
            pipe.execute()
        self.copied = start + len(chunk)

    def finish(self) -> None:
        """The last copy, once the attempt has ended: at most RUN_LOG_KEEP_BYTES stay for the week (a
        running job's follower needs the long copy; a finished job's reader mostly the end)."""
        self.sync(limit=RUN_LOG_KEEP_BYTES, keep=RUN_LOG_KEEP_BYTES)


@dataclass
class Attempt:
    job_id: int
    attempt: int
    vram_mb: int
    time_limit_s: int | None
    dir: Path
    mirror: LogMirror
    peak_mb: int = 0
    utils: list[float] = field(default_factory=list)  # compute utilisation samples, where the GPU tells
    stopped: Stopped | None = None
    stop_asked: float | None = None  # when it was asked to stop at its next checkpoint (monotonic clock)
    preempted_for: str = "to make room for another job"  # why, from the flag: "to make room for job N, ..."
    tail: metrics.MetricsTail = field(init=False)

    def __post_init__(self) -> None:
        self.tail = metrics.MetricsTail(self.output_dir / "metrics.jsonl")

    def mean_util(self, last: int) -> float:
        """The mean of its `last` utilisation samples (it has at least one), to 4 places."""
        recent = self.utils[-last:]
        return round(sum(recent) / len(recent), 4)

    @property
    def output_dir(self) -> Path:
        return self.dir / "output"

    @property
    def log_path(self) -> Path:
        return self.dir / "log.txt"

    @property
    def stop_file(self) -> Path:
        return self.dir / STOP_FILE


def execute(ctx: WorkerContext, job_id: int, attempt_no: int) -> str:
    with transaction(ctx.sessions) as session:
        job = session.get(Job, job_id)
        if job is None or job.status is not JobStatus.DISPATCHED or job.attempt != attempt_no:
            return "skipped: no longer dispatched"
        spec = _launch_spec(ctx, job)
    mirror = LogMirror(ctx.redis, job_id, attempt_no, spec.log_path)
    attempt = Attempt(job_id, attempt_no, job.vram_mb, job.time_limit_s, spec.output_dir.parent, mirror)
    try:
        process = launch(spec, dict(os.environ))
    except LaunchError as exc:
        with spec.log_path.open("a") as handle:
            handle.write(f"[vramq] launch error: {exc}\n")
        attempt.mirror.finish()
        with transaction(ctx.sessions) as session:
            session.execute(_run_paths(job_id, attempt_no, spec.log_path, spec.output_dir))
            transitions.finish(
                session,
                job,
                attempt_no,
                JobStatus.FAILED,
                reason=FailureReason.LAUNCH_ERROR,
                sources=(JobStatus.DISPATCHED,),
            )
        return "launch_error"

    pgid = process.pid
    pgids_key = NODE_PGIDS_KEY.format(node=ctx.settings.node)
    ctx.redis.hset(pgids_key, str(pgid), f"{job_id}:{attempt_no}")
    _heartbeat(ctx, attempt)
    try:
        with transaction(ctx.sessions) as session:
            started = transitions.start(
                session,
                job_id,
                attempt_no,
                pid=pgid,
                log_path=str(spec.log_path),
                output_dir=str(spec.output_dir),
            )
        if not started:  # cancelled between dispatch and start
            stop_group(process, ctx.settings.cancel_grace_s)
            return "skipped: cancelled before start"
        _supervise(ctx, process, attempt)
        signal_group(pgid, signal.SIGKILL)  # children the job left behind
        # Its live figures go before its end is recorded, so whoever reads the end reads none of them. The
        # heartbeat stays until then: without it a running job would look lost.
        ctx.redis.delete(*_live_figures(job_id, attempt_no))
        return _record_end(ctx, job, attempt, process.returncode)
    finally:
        attempt.mirror.finish()  # what the worker itself wrote at the end
        ctx.redis.hdel(pgids_key, str(pgid))
        ctx.redis.delete(
            RUN_HEARTBEAT_KEY.format(job_id=job_id, attempt=attempt_no),
            RUN_PREEMPT_KEY.format(job_id=job_id, attempt=attempt_no),
            *_live_figures(job_id, attempt_no),
        )


def _live_figures(job_id: int, attempt: int) -> tuple[str, str]:
    """The keys of a running attempt's progress and measured load."""
    return RUN_PROGRESS_KEY.format(job_id=job_id, attempt=attempt), RUN_LOAD_KEY.format(job_id=job_id, attempt=attempt)


def _launch_spec(ctx: WorkerContext, job: Job) -> LaunchSpec:
    indices = list(job.gpu_indices or [])
    totals = {gpu.index: gpu.total_mb for gpu in ctx.backend.gpus()}
    attempt_dir = ctx.settings.jobs_dir / str(job.id) / f"attempt-{job.attempt}"
    attempt_dir.mkdir(parents=True, exist_ok=True)
    return LaunchSpec(
        job_id=job.id,
        attempt=job.attempt,
        command=list(job.command),
        env=dict(job.env),
        workdir=Path(job.workdir) if job.workdir else None,
        output_dir=attempt_dir / "output",
        log_path=attempt_dir / "log.txt",
        stop_file=attempt_dir / STOP_FILE,
        vram_mb=job.vram_mb,
        gpu_indices=indices,
        gpu_total_mb=min((totals.get(i, 0) for i in indices), default=0),
        overhead_mb=ctx.settings.overhead_mb,
        simulator_dir=ctx.settings.simulator_dir if ctx.backend.simulated else None,
        base_dir=ctx.base_dir,
        keras=job.keras,
        resume_from=_latest_checkpoints(ctx.settings.jobs_dir / str(job.id), job.attempt),
        notes=tuple(f"warning: {text}" for text in job.warnings) if job.attempt == 1 else (),
    )


def _latest_checkpoints(job_dir: Path, attempt: int) -> Path | None:
    """The checkpoints of the latest earlier attempt that left any, for the next one to resume from."""
    for earlier in range(attempt - 1, 0, -1):
        checkpoints = job_dir / f"attempt-{earlier}" / "output" / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.rglob("*.h5")):
            return checkpoints
    return None


def _run_paths(job_id: int, attempt: int, log_path: Path, output_dir: Path) -> Update:
    return (
        update(Run)
        .where(Run.job_id == job_id, Run.attempt == attempt)
        .values(log_path=str(log_path), output_dir=str(output_dir))
    )


def _heartbeat(ctx: WorkerContext, attempt: Attempt) -> None:
    """Alive; how far its training has got when its autolog says; its recent compute load once measured."""
    key = RUN_HEARTBEAT_KEY.format(job_id=attempt.job_id, attempt=attempt.attempt)
    report = progress.read_file(attempt.output_dir)
    with ctx.redis.pipeline(transaction=False) as pipe:  # one round trip for all
        pipe.set(key, ctx.settings.node, px=int(RUN_HEARTBEAT_TTL_S * 1000))
        if report is not None:
            progress.publish(pipe, attempt.job_id, attempt.attempt, report)
        if len(attempt.utils) >= RUN_LOAD_SAMPLES:
            progress.publish_load(pipe, attempt.job_id, attempt.attempt, attempt.mean_util(RUN_LOAD_SAMPLES))
        pipe.execute()


def _group_usage(ctx: WorkerContext, pgid: int) -> tuple[int, float | None]:
    """The most memory the job's process group holds on any one of its GPUs, and its compute share there."""
    memory: dict[int, int] = {}
    compute: dict[int, float] = {}
    for process in ctx.backend.processes():
        try:
            if os.getpgid(process.pid) != pgid:
                continue
        except ProcessLookupError:
            continue
        memory[process.gpu_index] = memory.get(process.gpu_index, 0) + process.used_mb
        if process.util is not None:
            compute[process.gpu_index] = compute.get(process.gpu_index, 0.0) + process.util
    return max(memory.values(), default=0), (max(compute.values()) if compute else None)


def _cancel_requested(ctx: WorkerContext, job_id: int) -> bool:
    with ctx.sessions() as session:
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def _supervise(ctx: WorkerContext, process: subprocess.Popen[bytes], attempt: Attempt) -> None:
    """Wait for the process while enforcing cancel, preemption, time limit and the memory cap; follow its
    metrics."""
    settings = ctx.settings
    deadline = time.monotonic() + attempt.time_limit_s if attempt.time_limit_s else None
    while True:
        try:
            process.wait(timeout=settings.sample_interval_s)
            if attempt.stop_asked is not None and process.returncode == STOPPED_AT_CHECKPOINT:
                attempt.stopped = Stopped.PREEMPTED
            return
        except subprocess.TimeoutExpired:
            pass
        _heartbeat(ctx, attempt)
        _ingest_metrics(ctx, attempt)
        attempt.mirror.sync()
        used_mb, util = _group_usage(ctx, process.pid)
        attempt.peak_mb = max(attempt.peak_mb, used_mb)
        if util is not None:
            attempt.utils.append(min(1.0, util))
        if attempt.peak_mb > attempt.vram_mb + settings.cap_tolerance_mb:
            attempt.stopped = Stopped.CAP_EXCEEDED
        elif deadline is not None and time.monotonic() >= deadline:
            attempt.stopped = Stopped.TIMEOUT
        elif _cancel_requested(ctx, attempt.job_id):
            attempt.stopped = Stopped.CANCELLED
        elif flag := ctx.redis.get(RUN_PREEMPT_KEY.format(job_id=attempt.job_id, attempt=attempt.attempt)):
            attempt.preempted_for = _preempt_reason(flag) or attempt.preempted_for
            _preempt(attempt, settings.preempt_grace_s)
        if attempt.stopped is not None:
            with attempt.log_path.open("a") as handle:
                handle.write(f"[vramq] stopping the job: {attempt.stopped}\n")
            stop_group(process, settings.cancel_grace_s)
            return


def _preempt(attempt: Attempt, grace_s: float) -> None:
    """A job whose autolog reports progress (it checkpoints each epoch) is asked to stop at its epoch's end,
    once saved, and stopped after `grace_s` if it has not; any other job is stopped at once."""
    if attempt.stop_asked is None and grace_s > 0 and (attempt.output_dir / progress.FILE_NAME).exists():
        attempt.stop_asked = time.monotonic()
        attempt.stop_file.touch()
        _note(
            attempt,
            f"preempted {attempt.preempted_for}: asked to stop at the end of its epoch, once checkpointed "
            f"(at most {grace_s:g} s)",
        )
    elif attempt.stop_asked is None or time.monotonic() - attempt.stop_asked >= grace_s:
        attempt.stopped = Stopped.PREEMPTED


def _preempt_reason(flag: bytes | str) -> str | None:
    """What the scheduler set the flag to (loop.Scheduler._preempt); None for a flag set by hand ("1")."""
    reason = (flag.decode(errors="replace") if isinstance(flag, bytes) else flag).strip()
    return reason if reason.startswith("to ") else None


def _ingest_metrics(ctx: WorkerContext, attempt: Attempt) -> None:
    figures = attempt.tail.read_new()
    if figures:
        with transaction(ctx.sessions) as session:
            metrics.record(session, attempt.job_id, attempt.attempt, figures)


def _record_end(ctx: WorkerContext, job: Job, attempt: Attempt, exit_code: int) -> str:
    _ingest_metrics(ctx, attempt)
    attempt.mirror.sync()  # whole before the end is recorded, for a follower that stops at the end
    status, reason = classify(exit_code, read_tail(attempt.log_path), attempt.stopped)
    next_vram_mb = None
    if reason is FailureReason.OOM:
        next_vram_mb = sizing.grown_request(job.vram_mb, _largest_gpu_mb(ctx))
    with transaction(ctx.sessions) as session:
        # Before any job row is written: it takes the ledger lock, which the scheduler takes before its rows.
        alike = sizing.grow_alike(session, job, next_vram_mb) if next_vram_mb is not None else []
        reached = transitions.finish(
            session,
            job,
            attempt.attempt,
            status,
            reason=reason,
            exit_code=exit_code,
            peak_vram_mb=attempt.peak_mb or None,
            next_vram_mb=next_vram_mb,
        )
        if reached is not None and attempt.utils:
            session.execute(
                update(Run)
                .where(Run.job_id == job.id, Run.attempt == attempt.attempt)
                .values(util=attempt.mean_util(len(attempt.utils)))
            )
        if reached is JobStatus.SUCCEEDED:
            _register_models(session, job, attempt)
    if alike:
        log.info("job %s ran out of memory: its queued jobs alike %s now ask for %s MB", job.id, alike, next_vram_mb)
    if reached is JobStatus.QUEUED and reason is FailureReason.PREEMPTED:
        progress.keep_left(ctx.redis, job.id, attempt.output_dir)
        _note(attempt, f"preempted {attempt.preempted_for}: queued again (no retry used)")
    if reached is JobStatus.QUEUED and next_vram_mb is not None:
        _note(attempt, f"out of memory inside a {job.vram_mb} MB cap: retrying with {next_vram_mb} MB")
    if reached is None:
        log.warning("job %s attempt %s ended after it was declared lost", job.id, attempt.attempt)
        return "ignored: attempt already ended"
    return f"{status}" + (f" ({reason})" if reason else "")


def _note(attempt: Attempt, message: str) -> None:
    with attempt.log_path.open("a") as handle:
        handle.write(f"[vramq] {message}\n")


def _largest_gpu_mb(ctx: WorkerContext) -> int | None:
    sizes = [gpu.total_mb - ctx.settings.safety_margin_mb for node in live_nodes(ctx.redis) for gpu in node.gpus]
    return max(sizes, default=None)


def _register_models(session: Session, job: Job, attempt: Attempt) -> None:
    """Each model file of a successful attempt becomes a version, with the lineage that produced it."""
    artifacts = models.model_artifacts(attempt.output_dir / "models")
    if not artifacts:
        return
    started = session.scalar(select(Run.started_at).where(Run.job_id == job.id, Run.attempt == attempt.attempt))
    gpu_seconds = (utcnow() - started).total_seconds() * job.gpus if started else None
    best = metrics.best_epoch(session, job.id, attempt.attempt, (job.keras or {}).get("monitor"))
    for name, path in artifacts:
        models.register(
            session,
            name=name,
            path=path,
            job_id=job.id,
            attempt=attempt.attempt,
            metrics=best,
            spec=jobs.spec_of(job),
            peak_vram_mb=attempt.peak_mb or None,
            gpu_seconds=gpu_seconds,
            seed=(job.keras or {}).get("seed"),
        )
