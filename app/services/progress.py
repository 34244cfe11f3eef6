"""What a running attempt reports with its heartbeat: how far its training has got (and when that says it
ends), and how hard it works its GPU.

The Keras autolog hook rewrites $VRAMQ_OUTPUT_DIR/progress.json after every epoch: epochs done, epochs
planned, the epoch the fit began at (past epochs restored from a checkpoint took no time in this attempt)
and when it began (after imports, data loading and model building, which do not recur per epoch). The
worker copies it to Redis with every heartbeat; the scheduler reads it for the expected end of running
jobs, the "progress when known" that reservations use. The worker also publishes the job's measured
compute load over its recent samples, which the scheduler trusts over the job's history."""

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from redis import Redis

from app.constants import (
    RESUME_LEFT_KEY,
    RESUME_LEFT_TTL_S,
    RUN_HEARTBEAT_TTL_S,
    RUN_LOAD_KEY,
    RUN_PREEMPT_KEY,
    RUN_PROGRESS_KEY,
)

FILE_NAME = "progress.json"


@dataclass(frozen=True)
class Progress:
    done: int  # epochs done, counted from 0
    total: int  # epochs planned
    start: int  # the epoch the fit began at
    began: float  # when the fit began (Unix time)
    at: float  # when the last of its epochs ended (Unix time)

    def expected_end(self, started: float) -> float | None:
        """The epochs left at the fit's pace so far; None before its first epoch, or for a report older
        than the attempt that started at `started`."""
        if not started <= self.began:
            return None
        left = self.left_s()
        return None if left is None else self.at + left

    def epoch_end(self, started: float) -> float | None:
        """When the epoch under way ends at the fit's pace so far (a preempted fit stops then); None as for
        `expected_end`."""
        epoch = self.epoch_s()
        return None if epoch is None or not started <= self.began else self.at + epoch

    def left_s(self) -> float | None:
        """Seconds the epochs left take at the fit's pace so far; None before its first epoch."""
        epoch = self.epoch_s()
        return None if epoch is None else epoch * (self.total - self.done)

    def epoch_s(self) -> float | None:
        """Seconds an epoch takes at the fit's pace so far; None before its first epoch."""
        if not self.start < self.done <= self.total or not self.began < self.at:
            return None
        return (self.at - self.began) / (self.done - self.start)


def read_file(output_dir: Path) -> Progress | None:
    """The hook's latest report, dated by the file's change time; None without a readable one."""
    path = output_dir / FILE_NAME
    try:
        report = json.loads(path.read_text())
        counts = int(report["done"]), int(report["total"]), int(report["start"])
        return Progress(*counts, float(report["began"]), path.stat().st_mtime)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep_left(redis: Redis, job_id: int, output_dir: Path) -> None:
    """After a preemption: the run time its next attempt needs, from the stopped attempt's last report."""
    report = read_file(output_dir)
    left = report.left_s() if report is not None else None
    if left is not None:
        redis.set(RESUME_LEFT_KEY.format(job_id=job_id), repr(left), ex=RESUME_LEFT_TTL_S)


def resume_left(redis: Redis, job_ids: Sequence[int]) -> dict[int, float]:
    """Job id -> the run time left that its preempted attempt reported (keep_left), where there is one."""
    [left] = _latest(redis, (RESUME_LEFT_KEY,), [(job_id, 0) for job_id in job_ids])  # the key has no attempt
    return {job_id: float(raw) for job_id, raw in left.items()}


def publish(redis: Redis, job_id: int, attempt: int, progress: Progress) -> None:
    key = RUN_PROGRESS_KEY.format(job_id=job_id, attempt=attempt)
    redis.set(key, json.dumps(asdict(progress)), px=int(RUN_HEARTBEAT_TTL_S * 1000))


def publish_load(redis: Redis, job_id: int, attempt: int, load: float) -> None:
    key = RUN_LOAD_KEY.format(job_id=job_id, attempt=attempt)
    redis.set(key, repr(load), px=int(RUN_HEARTBEAT_TTL_S * 1000))


def read(redis: Redis, attempts: Sequence[tuple[int, int]]) -> tuple[dict[int, Progress], dict[int, float], set[int]]:
    """Job id -> the progress and job id -> the measured compute load its attempt last reported, for the
    (job id, attempt) pairs that have one, and the jobs whose attempt is being preempted (flagged, still
    running): what the scheduler reads each tick, in one MGET."""
    reports, loads, flags = _latest(redis, (RUN_PROGRESS_KEY, RUN_LOAD_KEY, RUN_PREEMPT_KEY), attempts)
    return (
        {i: Progress(**json.loads(raw)) for i, raw in reports.items()},
        {i: float(raw) for i, raw in loads.items()},
        set(flags),
    )


def read_loads(redis: Redis, attempts: Sequence[tuple[int, int]]) -> dict[int, float]:
    """Job id -> its attempt's measured compute load, for the (job id, attempt) pairs that have one."""
    [loads] = _latest(redis, (RUN_LOAD_KEY,), attempts)
    return {job_id: float(raw) for job_id, raw in loads.items()}


def _latest(
    redis: Redis, templates: Sequence[str], attempts: Sequence[tuple[int, int]]
) -> list[dict[int, bytes | str]]:
    """One MGET of each template's key for each (job id, attempt): per template, job id -> value, where
    there is one."""
    if not attempts:
        return [{} for _ in templates]
    keys = [template.format(job_id=job_id, attempt=attempt) for template in templates for job_id, attempt in attempts]
    values = redis.mget(keys)
    n = len(attempts)
    return [
        {job_id: raw for (job_id, _), raw in zip(attempts, values[k * n : (k + 1) * n], strict=True) if raw}  # type: ignore[index, misc]
        for k in range(len(templates))
    ]
