"""How far a running job's training has got, and when that says it ends.

The Keras autolog hook rewrites $VRAMQ_OUTPUT_DIR/progress.json after every epoch: epochs done, epochs
planned, and the epoch the attempt's fit began at (past epochs restored from a checkpoint took no time in
this attempt). The worker copies it to Redis with every heartbeat; the scheduler reads it for the expected
end of running jobs, the "progress when known" that reservations use."""

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from redis import Redis

from app.constants import RUN_HEARTBEAT_TTL_S, RUN_PROGRESS_KEY

FILE_NAME = "progress.json"


@dataclass(frozen=True)
class Progress:
    done: int  # epochs done, counted from 0
    total: int  # epochs planned
    start: int  # the epoch this attempt began at
    at: float  # when the last of them ended (Unix time)

    def expected_end(self, started: float) -> float | None:
        """The attempt's time so far (from `started`), scaled to all its epochs; None before its first."""
        if not self.start < self.done <= self.total or self.at <= started:
            return None
        return started + (self.at - started) * (self.total - self.start) / (self.done - self.start)


def read_file(output_dir: Path) -> Progress | None:
    """The hook's latest report, dated by the file's change time; None without a readable one."""
    path = output_dir / FILE_NAME
    try:
        report = json.loads(path.read_text())
        return Progress(int(report["done"]), int(report["total"]), int(report["start"]), path.stat().st_mtime)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def publish(redis: Redis, job_id: int, attempt: int, progress: Progress) -> None:
    key = RUN_PROGRESS_KEY.format(job_id=job_id, attempt=attempt)
    redis.set(key, json.dumps(asdict(progress)), px=int(RUN_HEARTBEAT_TTL_S * 1000))


def read(redis: Redis, attempts: Sequence[tuple[int, int]]) -> dict[int, Progress]:
    """Job id -> the progress its attempt last reported, for the (job id, attempt) pairs that have one."""
    if not attempts:
        return {}
    keys = [RUN_PROGRESS_KEY.format(job_id=job_id, attempt=attempt) for job_id, attempt in attempts]
    found = {}
    for (job_id, _), raw in zip(attempts, redis.mget(keys), strict=True):  # type: ignore[arg-type]
        if raw:
            found[job_id] = Progress(**json.loads(raw))
    return found
