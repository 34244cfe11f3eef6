"""The reservation ledger: what SQL says is reserved, combined with what the nodes report."""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job
from app.enums import ACTIVE
from app.scheduler.policy import GpuState, NodeState
from app.services.nodes import NodeSnapshot


@dataclass
class Reservations:
    """Active (dispatched or running) jobs, by node and by GPU."""

    mb: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    jobs: dict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    per_node: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def active_reservations(session: Session) -> Reservations:
    reservations = Reservations()
    rows = session.execute(select(Job.id, Job.node, Job.gpu_indices, Job.vram_mb).where(Job.status.in_(ACTIVE)))
    for job_id, node, indices, vram_mb in rows:
        reservations.per_node[node] += 1
        for index in indices or ():
            reservations.mb[node, index] += vram_mb
            reservations.jobs[node, index].append(job_id)
    return reservations


def available_mb(total_mb: int, reserved_mb: int, foreign_mb: int, margin_mb: int) -> int:
    """What a new job could be given: invariant 1 of DESIGN section 3 solved for the new request."""
    return max(0, total_mb - reserved_mb - foreign_mb - margin_mb)


def node_states(
    snapshots: Sequence[NodeSnapshot],
    reservations: Reservations,
    margin_mb: int,
    loads: dict[tuple[str, int], float] | None = None,
) -> list[NodeState]:
    """The policy's view of the live nodes; `loads` is the expected compute load of each GPU."""
    loads = loads or {}
    return [
        NodeState(
            name=snap.node,
            free_slots=max(0, snap.slots - reservations.per_node[snap.node]),
            gpus=tuple(
                GpuState(
                    gpu.index,
                    available_mb(gpu.total_mb, reservations.mb[snap.node, gpu.index], gpu.foreign_mb, margin_mb),
                    loads.get((snap.node, gpu.index), 0.0),
                )
                for gpu in snap.gpus
            ),
        )
        for snap in snapshots
    ]
