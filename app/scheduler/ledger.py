"""The reservation ledger: what SQL says is reserved, combined with what the nodes report."""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job
from app.enums import ACTIVE, JobStatus
from app.scheduler.state import GpuState, NodeState, RunningJob
from app.services.nodes import NodeSnapshot


@dataclass
class Reservations:
    """Active (dispatched or running) jobs, by node and by GPU."""

    mb: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    jobs: dict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    per_node: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def active_jobs(session: Session) -> Sequence[Job]:
    """Jobs holding a reservation: dispatched or running."""
    return session.scalars(select(Job).where(Job.status.in_(ACTIVE))).all()


def running_attempts(active: Sequence[Job]) -> list[tuple[int, int]]:
    """(job id, attempt) of the active jobs whose process runs: those that report progress and load."""
    return [(job.id, job.attempt) for job in active if job.status is JobStatus.RUNNING]


def reservations_of(active: Sequence[Job]) -> Reservations:
    reservations = Reservations()
    for job in active:
        node = job.node or ""
        reservations.per_node[node] += 1
        for index in job.gpu_indices or ():
            reservations.mb[node, index] += job.vram_mb
            reservations.jobs[node, index].append(job.id)
    return reservations


def available_mb(total_mb: int, reserved_mb: int, foreign_mb: int, margin_mb: int) -> int:
    """What a new job could be given: invariant 1 of DESIGN section 3 solved for the new request."""
    return max(0, total_mb - reserved_mb - foreign_mb - margin_mb)


def node_states(
    snapshots: Sequence[NodeSnapshot],
    reservations: Reservations,
    margin_mb: int,
    running: Sequence[RunningJob] = (),
) -> list[NodeState]:
    """The policy's view of the live nodes; each GPU's compute load is the expected utilisation of the
    `running` (active) jobs on it."""
    loads = gpu_loads(running)
    return [
        NodeState(
            name=snap.node,
            free_slots=max(0, snap.slots - reservations.per_node[snap.node]),
            gpus=tuple(
                GpuState(
                    gpu.index,
                    available_mb(gpu.total_mb, reservations.mb[snap.node, gpu.index], gpu.foreign_mb, margin_mb),
                    loads[snap.node, gpu.index],
                )
                for gpu in snap.gpus
            ),
        )
        for snap in snapshots
    ]


def gpu_loads(running: Sequence[RunningJob]) -> dict[tuple[str, int], float]:
    """(node, GPU index) -> the expected compute load of the jobs on it: the sum the compute cap applies to."""
    loads: dict[tuple[str, int], float] = defaultdict(float)
    for job in running:
        for index in job.gpu_indices:
            loads[job.node, index] += job.util
    return loads
