"""Why each queued job waits and when it may start: written by the scheduler each tick, read by the API."""

import contextlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError

from app.constants import PENDING_KEY, SCHEDULER_WAKE_KEY
from app.scheduler.state import Wait


def publish_waiting(redis: Redis, waiting: Mapping[int, Wait]) -> None:
    with redis.pipeline() as pipe:  # one MULTI/EXEC: readers never see a half-written table
        pipe.delete(PENDING_KEY)
        if waiting:
            pipe.hset(
                PENDING_KEY,
                mapping={
                    str(job_id): json.dumps({"reason": wait.reason, "estimated_start": wait.estimated_start})
                    for job_id, wait in waiting.items()
                },
            )
        pipe.execute()


def waiting_of(redis: Redis, job_ids: Sequence[int]) -> dict[int, tuple[str, datetime | None]]:
    if not job_ids:
        return {}
    found = {}
    for job_id, raw in zip(job_ids, redis.hmget(PENDING_KEY, [str(i) for i in job_ids]), strict=True):  # type: ignore[union-attr]
        if raw:
            record = json.loads(raw)
            start = record.get("estimated_start")
            found[job_id] = (record["reason"], datetime.fromtimestamp(start, UTC) if start else None)
    return found


def wake_scheduler(redis: Redis) -> None:
    """Tell the leader there is new work. Best effort: called after a commit, so a failure (Redis away)
    must not fail the request; the scheduler finds the work at its next tick anyway."""
    with contextlib.suppress(RedisError), redis.pipeline(transaction=False) as pipe:
        pipe.lpush(SCHEDULER_WAKE_KEY, 1)
        pipe.ltrim(SCHEDULER_WAKE_KEY, 0, 0)
        pipe.execute()
