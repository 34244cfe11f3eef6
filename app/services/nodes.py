"""Node snapshots in Redis: what each live node's GPUs hold, published by its agent every second."""

import json

from pydantic import BaseModel
from redis import Redis

from app.constants import NODE_KEY, NODES_KEY, SNAPSHOT_TTL_S


class GpuProcessInfo(BaseModel):
    pid: int
    used_mb: int
    job_id: int | None = None  # None: a process vramq did not start
    user: str | None = None  # its Unix user, so the admin knows who holds memory outside the queue
    util: float | None = None


class GpuSnapshot(BaseModel):
    index: int
    uuid: str
    name: str
    total_mb: int
    used_mb: int
    free_mb: int
    foreign_mb: int
    processes: list[GpuProcessInfo] = []


class NodeSnapshot(BaseModel):
    node: str
    time: float
    slots: int
    simulated: bool
    gpus: list[GpuSnapshot]


def publish(redis: Redis, snapshot: NodeSnapshot) -> None:
    with redis.pipeline() as pipe:
        pipe.sadd(NODES_KEY, snapshot.node)
        pipe.set(NODE_KEY.format(node=snapshot.node), snapshot.model_dump_json(), px=int(SNAPSHOT_TTL_S * 1000))
        pipe.execute()


def withdraw(redis: Redis, node: str) -> None:
    redis.delete(NODE_KEY.format(node=node))


def live_nodes(redis: Redis) -> list[NodeSnapshot]:
    """Snapshots of the nodes alive now, sorted by name."""
    names = sorted(n.decode() if isinstance(n, bytes) else n for n in redis.smembers(NODES_KEY))  # type: ignore[union-attr]
    if not names:
        return []
    raw = redis.mget([NODE_KEY.format(node=name) for name in names])
    return [NodeSnapshot.model_validate(json.loads(item)) for item in raw if item]  # type: ignore[union-attr]
