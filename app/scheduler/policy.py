"""The placement policy: (pending jobs, GPU states, now) -> placements. Pure, so the live scheduler and a
simulator run the same code."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuState:
    index: int
    available_mb: int  # total - reservations - foreign memory - safety margin


@dataclass(frozen=True)
class NodeState:
    name: str
    free_slots: int  # workers that can start one more job now
    gpus: tuple[GpuState, ...]


@dataclass(frozen=True)
class PendingJob:
    id: int
    vram_mb: int
    gpus: int = 1
    priority: int = 0
    submitted: float = 0.0


@dataclass(frozen=True)
class Placement:
    job_id: int
    node: str
    gpu_indices: tuple[int, ...]


def dispatch_order(pending: Iterable[PendingJob]) -> list[PendingJob]:
    """Higher priority first, then first submitted."""
    return sorted(pending, key=lambda job: (-job.priority, job.submitted, job.id))


def place(pending: Sequence[PendingJob], nodes: Sequence[NodeState], now: float) -> list[Placement]:
    """Place each job, in dispatch order, on the GPUs that it fits most tightly (best fit).

    A job that fits nowhere waits; later, smaller jobs may still start. Every placement is charged
    against the states before the next job is considered, so the result never over-commits a GPU.
    """
    available = {(node.name, gpu.index): gpu.available_mb for node in nodes for gpu in node.gpus}
    slots = {node.name: node.free_slots for node in nodes}
    placements: list[Placement] = []
    for job in dispatch_order(pending):
        best: tuple[tuple[int, str], Placement] | None = None
        for node in nodes:
            if slots[node.name] < 1:
                continue
            fitting = sorted(
                (available[node.name, gpu.index], gpu.index)
                for gpu in node.gpus
                if available[node.name, gpu.index] >= job.vram_mb
            )
            if len(fitting) < job.gpus:
                continue
            chosen = fitting[: job.gpus]
            score = (sum(free - job.vram_mb for free, _ in chosen), node.name)
            if best is None or score < best[0]:
                placement = Placement(job.id, node.name, tuple(sorted(index for _, index in chosen)))
                best = (score, placement)
        if best is None:
            continue
        placement = best[1]
        slots[placement.node] -= 1
        for index in placement.gpu_indices:
            available[placement.node, index] -= job.vram_mb
        placements.append(placement)
    return placements
