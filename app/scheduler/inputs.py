"""What the policy needs, read from SQL: pending and running jobs with their expected compute load and
end, and each user's decayed usage and current holdings."""

import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, Run, User
from app.scheduler.fairshare import decayed_gb_hours
from app.scheduler.policy import DEFAULT_UTIL, PendingJob, RunningJob, UserState
from app.services.sizing import recent_runs

# Utilisation follows the code more than the data: the newest few runs tell it.
UTIL_HISTORY_RUNS = 20


def expected_utils(session: Session, fingerprints: Sequence[str]) -> dict[str, float]:
    """Median measured compute utilisation of each fingerprint's recent runs."""
    history = recent_runs(session, "util", fingerprints, limit=UTIL_HISTORY_RUNS)
    return {fp: statistics.median(values) for fp, values in history.items()}


def util_of(job: Job, utils: dict[str, float]) -> float:
    return utils.get(job.fingerprint or "", DEFAULT_UTIL)


def pending_jobs(queued: Sequence[Job], utils: dict[str, float]) -> list[PendingJob]:
    return [
        PendingJob(
            id=job.id,
            vram_mb=job.vram_mb,
            gpus=job.gpus,
            priority=job.priority,
            submitted=job.created_at.timestamp(),
            user=job.user.name,
            util=util_of(job, utils),
            duration_s=float(job.time_limit_s) if job.time_limit_s else None,
        )
        for job in queued
    ]


def running_jobs(active: Sequence[Job], utils: dict[str, float]) -> list[RunningJob]:
    """Active jobs; one ends by its time limit at the latest (counted from dispatch until it starts)."""
    found = []
    for job in active:
        since = job.started_at or job.dispatched_at
        end = (since + timedelta(seconds=job.time_limit_s)).timestamp() if since and job.time_limit_s else None
        found.append(RunningJob(job.node or "", tuple(job.gpu_indices or ()), job.vram_mb, util_of(job, utils), end))
    return found


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
