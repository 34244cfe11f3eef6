"""The placement policy is a pure function: these tests need no service."""

import random

from app.scheduler.policy import GpuState, NodeState, PendingJob, place


def node(name: str, *available: int, slots: int = 8) -> NodeState:
    return NodeState(name, slots, tuple(GpuState(i, mb) for i, mb in enumerate(available)))


def test_best_fit_picks_the_tightest_gpu() -> None:
    [placement] = place([PendingJob(1, 3000)], [node("a", 10000, 3500, 5000)], now=0)

    assert (placement.node, placement.gpu_indices) == ("a", (1,))


def test_a_job_that_fits_nowhere_waits_while_smaller_ones_start() -> None:
    placements = place([PendingJob(1, 9000), PendingJob(2, 2000)], [node("a", 8000)], now=0)

    assert [p.job_id for p in placements] == [2]


def test_priority_then_submission_order() -> None:
    pending = [
        PendingJob(1, 5000, submitted=1),
        PendingJob(2, 5000, submitted=2),
        PendingJob(3, 5000, priority=5, submitted=3),
    ]

    placements = place(pending, [node("a", 8000), node("b", 6000)], now=0)

    assert [p.job_id for p in placements] == [3, 1]


def test_multi_gpu_jobs_take_gpus_of_one_node() -> None:
    placements = place([PendingJob(1, 4000, gpus=2)], [node("a", 8000), node("b", 5000, 4500, 1000)], now=0)

    assert [(p.node, p.gpu_indices) for p in placements] == [("b", (0, 1))]


def test_free_slots_limit_starts_per_node() -> None:
    placements = place([PendingJob(i, 100) for i in range(5)], [node("a", 8000, slots=2)], now=0)

    assert len(placements) == 2


def test_random_placements_never_over_commit() -> None:
    rng = random.Random(7)
    for _ in range(200):
        nodes = [node(f"n{k}", *(rng.randint(0, 24000) for _ in range(rng.randint(1, 4)))) for k in range(3)]
        pending = [PendingJob(i, rng.randint(100, 12000), gpus=rng.choice([1, 1, 2])) for i in range(30)]
        charged: dict[tuple[str, int], int] = {}
        for placement in place(pending, nodes, now=0):
            job = pending[placement.job_id]
            assert len(placement.gpu_indices) == job.gpus
            for index in placement.gpu_indices:
                charged[placement.node, index] = charged.get((placement.node, index), 0) + job.vram_mb
        for state in nodes:
            for gpu in state.gpus:
                assert charged.get((state.name, gpu.index), 0) <= gpu.available_mb
