"""What the policy needs, read from SQL: pending and running jobs with their expected compute load and
end, and each user's decayed usage and current holdings.

A queued job's expected run time is its time limit (a promise: the reservation bound holds) or, without
one, the median run time of its fingerprint's recent successful runs (an estimate, like its utilisation).
A running job may end sooner than its limit where its training's progress says so, and once its load has
been measured for a while (RUN_LOAD_SAMPLES), that measurement is its utilisation. A fingerprint with no
finished run yet takes its running jobs' measured loads: the rest of a sweep learns from its first jobs."""

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, Run, User
from app.enums import FailureReason, JobStatus
from app.scheduler.fairshare import decayed_gb_hours
from app.scheduler.state import DEFAULT_UTIL, PendingJob, RunningJob, UserState
from app.services.progress import Progress
from app.services.sizing import recent_runs

# Utilisation and run time follow the code more than the data: the newest few runs tell them.
RECENT_RUNS = 20


def expected_utils(session: Session, fingerprints: Sequence[str]) -> dict[str, float]:
    """Median measured compute utilisation of each fingerprint's recent runs."""
    history = recent_runs(session, "util", fingerprints, limit=RECENT_RUNS)
    return {fp: statistics.median(values) for fp, values in history.items()}


def expected_durations(session: Session, fingerprints: Sequence[str]) -> dict[str, float]:
    """Median run time in seconds of each fingerprint's recent successful runs."""
    history = recent_runs(session, ("started_at", "finished_at"), fingerprints, succeeded_only=True, limit=RECENT_RUNS)
    return {fp: statistics.median((end - start).total_seconds() for start, end in runs) for fp, runs in history.items()}


@dataclass(frozen=True)
class History:
    """What a fingerprint's recent runs say about a job: its compute load and its run time."""

    utils: dict[str, float]
    durations: dict[str, float]

    @classmethod
    def of(cls, session: Session, jobs: Sequence[Job], loads: dict[int, float] | None = None) -> "History":
        """From the jobs' fingerprints' recent runs; a fingerprint that no finished run describes takes the
        median of the loads measured on its running jobs (`loads`: job id -> load)."""
        fingerprints = sorted({job.fingerprint for job in jobs if job.fingerprint})
        utils = expected_utils(session, fingerprints)
        loads = loads or {}
        measured: dict[str, list[float]] = defaultdict(list)
        for job in jobs:
            if job.fingerprint and job.fingerprint not in utils and job.id in loads:
                measured[job.fingerprint].append(loads[job.id])
        utils |= {fp: statistics.median(values) for fp, values in measured.items()}
        return cls(utils, expected_durations(session, fingerprints))

    def util(self, job: Job) -> float:
        return self.utils.get(job.fingerprint or "", DEFAULT_UTIL)

    def duration(self, job: Job) -> float | None:
        """Its time limit, else its history's median run time; None: unknown."""
        if job.time_limit_s:
            return float(job.time_limit_s)
        return self.durations.get(job.fingerprint or "")


def pending_jobs(
    queued: Sequence[Job], history: History, resume_left: dict[int, float] | None = None
) -> list[PendingJob]:
    """Queued jobs as the policy sees them: run time from their time limit or history, or for one queued
    again after a preemption, what its stopped attempt's pace said was left (`resume_left`: job id ->
    seconds), when sooner."""
    pending = []
    for job in queued:
        duration, is_limit = history.duration(job), bool(job.time_limit_s)
        left = (resume_left or {}).get(job.id) if job.failure_reason is FailureReason.PREEMPTED else None
        if left is not None and (duration is None or left < duration):
            duration, is_limit = left, False
        pending.append(
            PendingJob(
                id=job.id,
                vram_mb=job.vram_mb,
                gpus=job.gpus,
                priority=job.priority,
                submitted=job.created_at.timestamp(),
                user=job.user.name,
                util=history.util(job),
                duration_s=duration,
                duration_is_limit=is_limit,
            )
        )
    return pending


def running_jobs(
    active: Sequence[Job],
    history: History,
    now: datetime,
    progress: dict[int, Progress] | None = None,
    loads: dict[int, float] | None = None,
    stopping: set[int] | None = None,
) -> list[RunningJob]:
    """Active jobs with their compute load (measured, else from history) and expected end: by their time
    limit at the latest (counted from dispatch until they start), sooner where their training's progress
    says so, else after their history's run time. How long a stop asked now takes (`_stop_s`). `stopping`:
    the jobs already preempted, finishing their epoch. Resumed: its last attempt was preempted."""
    loads, progress, stopping = loads or {}, progress or {}, stopping or set()
    moment = now.timestamp()
    jobs = []
    for job in active:
        report = progress.get(job.id)
        stop_s = _stop_s(job, report, moment)
        stops_at = moment + stop_s if job.id in stopping and stop_s is not None else None  # preempted already
        jobs.append(
            RunningJob(
                job.node or "",
                tuple(job.gpu_indices or ()),
                job.vram_mb,
                loads.get(job.id, history.util(job)),
                _expected_end(job, history, report, moment, stops_at),
                job.id,
                stop_s,
                job.id in stopping,
                job.failure_reason is FailureReason.PREEMPTED,  # kept from its last attempt until it ends
            )
        )
    return jobs


def _stop_s(job: Job, report: Progress | None, now: float) -> float | None:
    """Seconds until a running attempt asked now to stop would have stopped: at the end of its epoch under way
    at its pace (its autolog saves that epoch, and the next attempt resumes from it), at once where that epoch
    runs late. None before an epoch of this attempt's own: no pace to tell (and one that has just resumed is
    not stopped again)."""
    if job.status is not JobStatus.RUNNING or job.started_at is None or report is None:
        return None
    end = report.epoch_end(job.started_at.timestamp())
    return None if end is None else max(0.0, end - now)


def _expected_end(
    job: Job, history: History, report: Progress | None, now: float, stops_at: float | None
) -> float | None:
    """None: unknown (no time limit, and no progress or history, or it ran past what they said). A job being
    preempted ends by `stops_at`: the end of the epoch under way, at its pace (or now, where that epoch runs
    late; `_stop_s`)."""
    since = job.started_at or job.dispatched_at
    if since is None:
        return None
    limit = since.timestamp() + job.time_limit_s if job.time_limit_s else None
    guess = report.expected_end(job.started_at.timestamp()) if report and job.started_at else None
    if guess is None and limit is None and (typical := history.duration(job)) is not None:
        guess = since.timestamp() + typical  # a time limit is a promise: history does not overrule it
    if guess is not None and guess <= now:
        guess = None
    ends = [end for end in (limit, guess, stops_at) if end is not None]
    return min(ends) if ends else None


def user_states(session: Session, active: Sequence[Job], now: datetime, half_life_s: float) -> dict[str, UserState]:
    """Decayed reserved GB-hours of each user's runs (ten half-lives back), and what each holds now."""
    since = now - timedelta(seconds=10 * half_life_s)
    rows = session.execute(
        select(User.name, Run.reserved_at, Run.released_at, Run.vram_mb, Run.gpu_indices)
        .join(Job, Job.id == Run.job_id)
        .join(User, User.id == Job.user_id)
        .where((Run.released_at.is_(None)) | (Run.released_at >= since))
    )
    intervals: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for name, reserved_at, released_at, vram_mb, gpu_indices in rows:
        end = (released_at or now).timestamp()
        intervals[name].append((reserved_at.timestamp(), end, vram_mb * len(gpu_indices or [0]) / 1024))
    running: dict[str, int] = defaultdict(int)
    reserved: dict[str, int] = defaultdict(int)
    for job in active:
        running[job.user.name] += 1
        reserved[job.user.name] += job.vram_mb * job.gpus
    names = set(intervals) | set(running)
    return {
        name: UserState(
            usage=decayed_gb_hours(intervals.get(name, []), now.timestamp(), half_life_s),
            running=running[name],
            reserved_mb=reserved[name],
        )
        for name in names
    }
