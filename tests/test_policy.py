"""The placement policy is a pure function: these tests need no service."""

import math
import random
from dataclasses import replace

import pytest

from app.scheduler.cluster import Cluster
from app.scheduler.forecast import forecast
from app.scheduler.policy import place
from app.scheduler.state import GpuState, NodeState, PendingJob


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


# --- fair share, quotas, backfill, reasons -------------------------------------------------------

from app.scheduler.fairshare import DecayedUsage, decayed_gb_hours  # noqa: E402
from app.scheduler.policy import critical_path, schedule  # noqa: E402
from app.scheduler.state import Placement, PolicyConfig, Preemption, Quotas, RunningJob, UserState  # noqa: E402


def test_decayed_usage_halves_each_half_life() -> None:
    day = 24 * 3600.0
    recent = decayed_gb_hours([(day * 9, day * 10, 10.0)], now=day * 10, half_life_s=day)
    older = decayed_gb_hours([(day * 8, day * 9, 10.0)], now=day * 10, half_life_s=day)

    assert older == pytest.approx(recent / 2)
    assert recent == pytest.approx(10 * 24 / (2 * math.log(2)), rel=1e-6)  # 10 GB over a day, decayed


def test_incremental_usage_matches_the_closed_form() -> None:
    usage = DecayedUsage(half_life_s=3600)
    usage.advance(100)
    usage.reserve("a", 8.0)
    usage.advance(5000)
    usage.reserve("a", -8.0)
    usage.advance(9000)

    assert usage.value["a"] == pytest.approx(decayed_gb_hours([(100, 5000, 8.0)], 9000, 3600))


def test_a_light_user_goes_before_a_heavy_users_backlog() -> None:
    heavy = [PendingJob(i, 6000, submitted=i, user="heavy", util=0.1) for i in range(100)]
    light = [PendingJob(100 + i, 6000, submitted=200 + i, user="light", util=0.1) for i in range(5)]
    users = {"heavy": UserState(usage=50.0), "light": UserState(usage=0.0)}

    placements = schedule(heavy + light, [node("a", 24000, 24000)], now=0, users=users).placements

    assert [p.job_id for p in placements][:5] == [100, 101, 102, 103, 104]


def test_fair_share_alternates_between_equal_users() -> None:
    jobs = [PendingJob(i, 1000, submitted=i, user="a", util=0.1) for i in range(4)]
    jobs += [PendingJob(10 + i, 1000, submitted=10 + i, user="b", util=0.1) for i in range(4)]

    placements = schedule(jobs, [node("a", 4000, slots=4)], now=0).placements

    assert sorted(p.job_id for p in placements) == [0, 1, 10, 11]


def test_quotas_hold_jobs_back_with_a_reason() -> None:
    config = PolicyConfig(quotas=Quotas(running=2, reserved_mb=10000))
    users = {"a": UserState(running=1, reserved_mb=1000)}
    pending = [PendingJob(1, 1000, user="a"), PendingJob(2, 1000, user="a", submitted=1), PendingJob(3, 9500, user="b")]

    decision = schedule(pending, [node("n", 24000, 24000)], now=0, users=users, config=config)

    assert [p.job_id for p in decision.placements] == [1, 3]
    assert decision.waiting[2].reason == "user quota: 2 running jobs"


def test_pending_reason_names_the_shortfall() -> None:
    decision = schedule([PendingJob(1, 12000)], [node("node-a", 8000, 6000)], now=0)

    assert decision.waiting[1].reason == "needs 12000 MB on one GPU; most available now: 8000 MB on node-a GPU 0"


def test_backfill_never_delays_the_reserved_head() -> None:
    """A 20000 MB job waits for a 16000 MB job ending at t=100. Later jobs may start ahead of it only if
    they end by t=100 or leave it 20000 MB then: its start stays at t=100."""
    running = [RunningJob("a", (0,), 16000, util=0.3, expected_end=100.0)]
    head = PendingJob(1, 20000, submitted=0, duration_s=50)
    short = PendingJob(2, 4000, submitted=1, duration_s=60, util=0.2)
    long = PendingJob(3, 5000, submitted=0.5, duration_s=1000, util=0.2)
    beside = PendingJob(4, 3000, submitted=3, duration_s=1000, util=0.2)
    nodes = [NodeState("a", 8, (GpuState(0, 24000 - 16000, util=0.3),))]

    config = PolicyConfig(critical_share=None)  # backfill alone: no job jumps the order for being long
    decision = schedule([head, short, long, beside], nodes, now=0, running=running, config=config)

    assert sorted(p.job_id for p in decision.placements) == [2, 4]
    assert decision.waiting[1].estimated_start == 100.0
    assert "held for job 1" in decision.waiting[3].reason


@pytest.mark.parametrize("config", [PolicyConfig(), PolicyConfig(critical_share=None)], ids=["default", "backfill"])
def test_the_reserved_job_fits_at_its_reserved_time_whatever_was_backfilled(config: PolicyConfig) -> None:
    """The bound on random states: with run times that are limits (a job ends by then, as a time limit
    makes it), once one decision has placed what it places, the job given a reservation at T still finds
    room at T: memory that running jobs release by T, less what placed jobs may still hold then."""
    rng = random.Random(11)
    checked = 0
    for _ in range(400):
        nodes, running = [], []
        for n in range(rng.choice([1, 2])):
            gpus = []
            for index in range(rng.randint(1, 4)):
                used = util = 0.0
                while rng.random() < 0.6 and used < 20000:
                    vram = rng.randint(1000, 12000)
                    if used + vram > 24000:
                        break
                    end = rng.uniform(10, 1000) if rng.random() < 0.9 else None
                    running.append(RunningJob(f"n{n}", (index,), vram, rng.uniform(0.1, 0.9), end))
                    used, util = used + vram, util + running[-1].util
                gpus.append(GpuState(index, int(24000 - used), util))
            nodes.append(NodeState(f"n{n}", 100, tuple(gpus)))
        pending = [
            PendingJob(
                i,
                rng.choice([rng.randint(500, 6000), rng.randint(6000, 24000)]),
                gpus=rng.choice([1, 1, 1, 2]),
                submitted=rng.uniform(0, 100),
                user=rng.choice("abc"),
                util=rng.uniform(0.1, 0.9),
                duration_s=rng.uniform(10, 2000) if rng.random() < 0.9 else None,
            )
            for i in range(rng.randint(5, 30))
        ]

        decision = schedule(pending, nodes, now=0, running=running, config=config)

        reserved = [(i, w.estimated_start) for i, w in decision.waiting.items() if w.estimated_start is not None]
        if not reserved:
            continue
        [(head_id, start)] = reserved  # one reservation per decision
        head = pending[head_id]
        free = {(state.name, gpu.index): gpu.available_mb for state in nodes for gpu in state.gpus}
        for job in running:
            if job.expected_end is not None and job.expected_end <= start:
                for index in job.gpu_indices:
                    free[job.node, index] += job.vram_mb
        for placement in decision.placements:
            job = pending[placement.job_id]
            if job.duration_s is None or job.duration_s > start:
                for index in placement.gpu_indices:
                    free[placement.node, index] -= job.vram_mb
        roomy = [sum(free[state.name, g.index] >= head.vram_mb for g in state.gpus) for state in nodes]
        assert max(roomy) >= head.gpus, (head, start, decision.placements)
        checked += 1
    assert checked > 50  # the seed gives enough states with a reservation to mean something


def test_without_known_ends_the_held_gpu_takes_no_backfill() -> None:
    running = [RunningJob("a", (0,), 16000, expected_end=None)]
    nodes = [NodeState("a", 8, (GpuState(0, 8000), GpuState(1, 3000)))]
    pending = [PendingJob(1, 20000), PendingJob(2, 2000, submitted=1), PendingJob(3, 2500, submitted=2)]

    decision = schedule(pending, nodes, now=0, running=running, config=PolicyConfig(critical_share=None))

    assert [(p.job_id, p.gpu_indices) for p in decision.placements] == [(2, (1,))]
    assert decision.waiting[1].estimated_start is None


def test_strict_order_blocks_behind_the_head() -> None:
    config = PolicyConfig(fair_share=False, backfill=False, compute_cap=None, critical_share=None)
    decision = schedule([PendingJob(1, 9000), PendingJob(2, 100, submitted=1)], [node("a", 8000)], now=0, config=config)

    assert decision.placements == []
    assert decision.waiting[2].reason == "waiting behind job 1 (strict order)"


def test_compute_cap_spreads_busy_jobs() -> None:
    pending = [PendingJob(i, 2000, util=0.9, submitted=i) for i in range(3)]

    decision = schedule(pending, [node("a", 24000, 24000)], now=0)

    # Memory alone would stack all three on one GPU; compute keeps each GPU's expected load under 1.7.
    assert sorted(p.gpu_indices for p in decision.placements) == [(0,), (1,)]
    assert "compute-saturated" in decision.waiting[2].reason


def test_a_short_job_may_take_a_gpu_past_the_compute_cap() -> None:
    """The GPU runs at load 1.3 until 100,000 s. A 100 s job of util 0.5 would take it to 1.8, past the cap
    of 1.7; slowed so, it runs 180 s, under SHORT_SHARE (0.01) of the 100,000 s to the end of the known work:
    it starts. A 5,000 s one alike waits, as does a short one that would take the load past SHORT_LOAD (2.5).
    (Without the critical path here: the running job, most of the known work, would be protected, and no job
    may slow it past the cap.)"""
    running = [RunningJob("a", (0,), 2000, 1.3, 100000.0, job_id=9)]
    pending = [
        PendingJob(1, 2000, util=0.5, duration_s=100.0, submitted=1),
        PendingJob(2, 2000, util=0.5, duration_s=5000.0, submitted=2),
        PendingJob(3, 2000, util=1.3, duration_s=100.0, submitted=3),
    ]

    gpu = NodeState("a", 8, (GpuState(0, 20000, util=1.3),))
    decision = schedule(pending, [gpu], now=0, running=running, config=PolicyConfig(critical_share=None))

    assert [p.job_id for p in decision.placements] == [1]
    assert "compute-saturated" in decision.waiting[2].reason and "compute-saturated" in decision.waiting[3].reason


def test_a_long_job_waits_rather_than_share_compute_with_another_long_one() -> None:
    """GPU 0 runs a long busy job; GPU 1 a short one that leaves no memory now. A second long busy job
    would double both run times on GPU 0 (both end near t=1720); waiting for GPU 1 at t=50 ends it by 950."""
    running = [
        RunningJob("a", (0,), 4000, util=0.9, expected_end=1000.0),
        RunningJob("a", (1,), 22000, util=0.9, expected_end=50.0),
    ]
    nodes = [NodeState("a", 8, (GpuState(0, 20000, util=0.9), GpuState(1, 2000, util=0.9)))]
    long = PendingJob(1, 4000, util=0.9, duration_s=900)

    decision = schedule([long], nodes, now=0, running=running)

    assert decision.placements == []
    assert decision.waiting[1].estimated_start == 50.0
    assert "finish sooner" in decision.waiting[1].reason


def test_a_long_job_goes_where_it_delays_the_known_work_least() -> None:
    """GPU 0 is the least loaded, but its job runs until t=10000: a critical 3000 s job of util 0.9 there
    would push that end to 10300. On GPU 1 it shares 20 s with a job ending at t=20 and ends at 3008."""
    running = [
        RunningJob("a", (0,), 1000, util=0.2, expected_end=10000.0),
        RunningJob("a", (1,), 1000, util=0.5, expected_end=20.0),
    ]
    nodes = [NodeState("a", 8, (GpuState(0, 20000, util=0.2), GpuState(1, 20000, util=0.5)))]
    long = PendingJob(1, 2000, util=0.9, duration_s=3000)

    assert critical_path([long], running, gpu_count=2, now=0, share=0.9)[0] == {1}
    decision = schedule([long], nodes, now=0, running=running)

    assert [p.gpu_indices for p in decision.placements] == [(1,)]


def test_a_short_job_shares_a_critical_jobs_gpu_only_where_it_delays_no_end() -> None:
    """Two long busy jobs are critical: GPU 0's ends at t=10000, the end of all known work; GPU 1's at 6000.
    A 100 s job taking either past saturation slows its job by 30 s: on GPU 1 that still ends by 10000,
    on GPU 0 it would push the end itself. Alone with GPU 0, it waits."""
    running = [
        RunningJob("a", (0,), 4000, util=0.8, expected_end=10000.0),
        RunningJob("a", (1,), 4000, util=0.8, expected_end=6000.0),
    ]
    gpus = (GpuState(0, 20000, util=0.8), GpuState(1, 20000, util=0.8))
    short = PendingJob(1, 2000, util=0.5, duration_s=100)
    assert len(critical_path([short], running, gpu_count=2, now=0, share=0.9)[1]) == 2

    both = schedule([short], [NodeState("a", 8, gpus)], now=0, running=running)
    alone = schedule([short], [NodeState("a", 8, gpus[:1])], now=0, running=running[:1])

    assert [p.gpu_indices for p in both.placements] == [(1,)]
    assert alone.placements == []
    assert "compute-saturated" in alone.waiting[1].reason


def test_a_critical_job_planned_on_its_time_limit_stacks_past_the_cap_only_onto_an_unsaturated_gpu() -> None:
    """Both GPUs run a busy job until t=2000. A 4000 s job of utilisation 0.9 is critical (0.9 of the 3800
    GPU-seconds of known work per GPU is 3420 s). With its run time known it starts now at a load of 1.9,
    past the cap of 1.7: it still ends at 5800, sooner than waiting (6000). Planned on a time limit, the
    true end of the stack is not known, so it waits for a GPU to free up rather than pile onto a saturated
    one; a GPU below saturation (0.8) it may still take past the cap."""
    running = [RunningJob("a", (i,), 4000, util=1.0, expected_end=2000.0) for i in range(2)]
    saturated = [NodeState("a", 8, (GpuState(0, 20000, util=1.0), GpuState(1, 20000, util=1.0)))]
    estimate = PendingJob(1, 4000, util=0.9, duration_s=4000)
    limit = replace(estimate, duration_is_limit=True)
    assert critical_path([estimate], running, gpu_count=2, now=0, share=0.9)[0] == {1}

    known = schedule([estimate], saturated, now=0, running=running)
    bounded = schedule([limit], saturated, now=0, running=running)
    unsaturated = [NodeState("a", 8, (GpuState(0, 20000, util=1.0), GpuState(1, 20000, util=0.8)))]
    beside = schedule([limit], unsaturated, now=0, running=[running[0], replace(running[1], util=0.8)])

    assert [p.gpu_indices for p in known.placements] == [(0,)]
    assert bounded.placements == []
    assert "compute-saturated" in bounded.waiting[1].reason
    assert bounded.waiting[1].estimated_start is None  # not now: the forecast dates it
    assert forecast([limit], saturated, now=0, config=PolicyConfig(), running=running) == {1: 2000.0}
    assert [p.gpu_indices for p in beside.placements] == [(1,)]


def test_jobs_too_big_to_share_a_gpu_set_the_end_together() -> None:
    """Known compute: 8 x 300 x 0.1 + 10 x 100 x 0.5 = 740 GPU-seconds, 370 s on 2 GPUs. No 16 GB job is
    long enough to matter alone (300 s), but no two fit on one 24 GB GPU: they need 8 x 300 / 2 = 1200 s
    of whole GPUs, so they go first, one per GPU, before small jobs submitted earlier fill the GPUs."""
    small = [PendingJob(i, 2000, util=0.5, submitted=i, duration_s=100) for i in range(10)]
    big = [PendingJob(10 + i, 16000, util=0.1, submitted=10 + i, duration_s=300) for i in range(8)]
    half = [PendingJob(20 + i, 12000, util=0.1, submitted=20 + i, duration_s=300) for i in range(8)]

    assert critical_path([*small, *big], [], gpu_count=2, now=0, share=0.9, capacity_mb=24000)[0] == {j.id for j in big}
    assert critical_path([*small, *big], [], gpu_count=2, now=0, share=0.9)[0] == set()
    assert critical_path([*small, *half], [], gpu_count=2, now=0, share=0.9, capacity_mb=24000)[0] == set()

    decision = schedule([*small, *big], [NodeState("a", 100, (GpuState(0, 24000), GpuState(1, 24000)))], now=0)

    assert sorted(p.job_id for p in decision.placements if p.job_id >= 10) == [10, 11]
    assert sorted(p.gpu_indices for p in decision.placements if p.job_id >= 10) == [(0,), (1,)]


def test_a_saturated_gpu_takes_no_more_work() -> None:
    decision = schedule([PendingJob(1, 2000, util=0.5)], [NodeState("a", 8, (GpuState(0, 20000, util=1.3),))], now=0)

    assert decision.placements == []
    assert "compute-saturated" in decision.waiting[1].reason


def test_busy_gpus_make_a_long_job_critical_sooner() -> None:
    """Known work: 800 GPU-seconds on 2 GPUs, 400 s packed. A 300 s job is under 0.9 of that on idle GPUs,
    but at a mean load of 1.5 it would take about 450 s: it now sets the end, so it goes first."""
    pending = [PendingJob(1, 1000, util=1.0, duration_s=300), PendingJob(2, 1000, util=1.0, duration_s=50)]
    idle = [RunningJob("a", (0,), 1000, util=0.1, expected_end=4500.0)]  # 450 GPU-seconds left
    busy = [
        RunningJob("a", (0,), 1000, util=1.0, expected_end=150.0),
        RunningJob("a", (1,), 1000, util=1.0, expected_end=150.0),
        RunningJob("a", (1,), 1000, util=1.0, expected_end=150.0),
    ]

    assert critical_path(pending, idle, gpu_count=2, now=0, share=0.9)[0] == set()
    assert critical_path(pending, busy, gpu_count=2, now=0, share=0.9)[0] == {1}


def test_every_queued_job_whose_future_is_known_gets_an_estimated_start() -> None:
    """One 24 GB GPU; a 20 GB job runs until t=100; four 20 GB jobs queue. The policy reserves for the
    first only; the forecast replays it at each expected end and dates the others too, in the policy's
    own order, until a job of unknown length leaves the rest without a date."""
    running = [RunningJob("a", (0,), 20000, util=0.3, expected_end=100.0)]
    nodes = [NodeState("a", 8, (GpuState(0, 4000, util=0.3),))]
    pending = [
        PendingJob(1, 20000, submitted=1, duration_s=50),
        PendingJob(2, 20000, submitted=2, duration_s=30),
        PendingJob(3, 20000, submitted=3, duration_s=None),
        PendingJob(4, 20000, submitted=4, duration_s=None),
    ]
    config = PolicyConfig(critical_share=None)

    decision = schedule(pending, nodes, now=0, running=running, config=config)
    estimates = forecast(pending, nodes, 0.0, config=config, running=running)

    assert [decision.waiting[i].estimated_start for i in (1, 2, 3, 4)] == [100.0, None, None, None]
    assert estimates == {1: 100.0, 2: 150.0, 3: 180.0}  # job 3 never ends: job 4 cannot be dated


def test_the_forecast_keeps_each_users_running_quota() -> None:
    """Room for all three at once, but a running quota of one: the user's jobs follow each other."""
    pending = [PendingJob(i, 1000, submitted=i, user="ann", duration_s=10) for i in (1, 2, 3)]
    config = PolicyConfig(quotas=Quotas(running=1))

    estimates = forecast(pending, [node("a", 24000)], 0.0, config=config)

    assert estimates == {1: 0.0, 2: 10.0, 3: 20.0}


class _Forgetful(dict):
    """A Cluster cache (misses, waits) that never remembers: every job is judged on its own."""

    def __contains__(self, key: object) -> bool:
        return False


@pytest.mark.parametrize("config", [PolicyConfig(), PolicyConfig(critical_share=None)], ids=["default", "backfill"])
def test_judging_alike_queued_jobs_once_changes_no_decision(
    config: PolicyConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sweeps (jobs alike in request, GPUs and load, differing in run time) on random states: placements,
    reasons and estimated starts are those of judging every job on its own."""
    rng = random.Random(5)
    states = []
    for _ in range(150):
        running = [
            RunningJob(f"n{i % 2}", (i % 3,), rng.randint(1000, 8000), rng.uniform(0.1, 0.9), rng.uniform(10, 900))
            for i in range(rng.randint(0, 8))
        ]
        nodes = [
            NodeState(
                f"n{n}",
                rng.randint(1, 6),
                tuple(GpuState(g, rng.randint(0, 24000), rng.uniform(0.3, 1.5)) for g in range(3)),
            )
            for n in range(2)
        ]
        vram, gpus = rng.choice([2000, 4000, 9000, 16000]), rng.choice([1, 1, 2])
        shapes = [(vram, gpus, 0.2), (vram, gpus, 0.9), (vram, 3 - gpus, 0.5), (rng.choice([3000, 12000]), 1, 0.3)]
        pending = [
            PendingJob(
                i,
                vram,
                gpus,
                submitted=float(i),
                user=rng.choice("ab"),
                util=util,
                duration_s=rng.choice([None, 1.0, 60.0, 5000.0, 90000.0]),  # 1 s: short enough to pass the cap
            )
            for i, (vram, gpus, util) in enumerate(rng.choice(shapes) for _ in range(rng.randint(5, 40)))
        ]
        states.append((pending, nodes, running))
    remembered = [schedule(p, n, 0.0, running=r, config=config) for p, n, r in states]
    init = Cluster.__init__

    def forgetful(self: Cluster, *args: object) -> None:
        init(self, *args)  # type: ignore[arg-type]
        self.misses = self.waits = _Forgetful()

    monkeypatch.setattr(Cluster, "__init__", forgetful)
    assert [schedule(p, n, 0.0, running=r, config=config) for p, n, r in states] == remembered
    assert sum(len(d.placements) for d in remembered) > 100 and sum(len(d.waiting) for d in remembered) > 1000


def test_a_critical_job_too_big_to_share_a_gpu_takes_the_empty_one_before_a_longer_critical_job() -> None:
    """Both are critical. The 150000 s job, placed first as the longer, would take the empty GPU 0 and leave
    the 22000 MB one to wait for GPU 1's job to end at 80000 (the end: 180000). The big job goes first:
    it ends at 100000, and the long one, slowed beside GPU 1's job until 80000, at about 172900."""
    big = PendingJob(1, 22000, util=0.5, duration_s=100000)
    long = PendingJob(2, 8000, util=0.5, duration_s=150000)
    nodes = [NodeState("a", 8, (GpuState(0, 24000, util=0.0), GpuState(1, 10000, util=0.9)))]
    running = [RunningJob("a", (1,), 14000, util=0.9, expected_end=80000.0, job_id=10)]

    decision = schedule([long, big], nodes, now=0, running=running)

    assert decision.placements == [Placement(1, "a", (0,)), Placement(2, "a", (1,))]


def test_the_room_a_preemption_made_goes_to_the_job_it_was_made_for() -> None:
    """The stopped job, queued again with its long run left, is critical and would take the emptied GPU
    first; the short big job it was stopped for (`making_room`) is considered before it instead."""
    big = PendingJob(1, 22000, util=0.5, duration_s=1000)
    stopped = PendingJob(2, 8000, util=0.5, duration_s=100000)
    nodes = [NodeState("a", 8, (GpuState(0, 24000),))]

    assert [p.job_id for p in schedule([big, stopped], nodes, now=0).placements] == [2]
    assert [p.job_id for p in schedule([big, stopped], nodes, now=0, making_room={1}).placements] == [1]


def test_no_job_takes_the_compute_of_a_room_being_made() -> None:
    """Job 11 is stopping on GPU 0 to make room for job 1 (20000 MB at 0.3), and ends its epoch at t=600. Both
    queued 2000 MB jobs fit beside the room; the one at 0.95 would have job 1 share compute there (it would then
    rather wait for another GPU, and job 11 would have stopped for nothing), so it is held; the one at 0.1 is
    not (seed 248 at 1.6 lost such a room, and 3 jobs stopped for it)."""
    big = PendingJob(1, 20000, util=0.3, duration_s=100000)
    busy = PendingJob(2, 2000, util=0.95, duration_s=5000)
    light = PendingJob(3, 2000, util=0.1, duration_s=5000)
    nodes = [NodeState("a", 8, (GpuState(0, 18576, util=0.3), GpuState(1, 1576, util=0.3)))]
    running = [
        RunningJob("a", (0,), 6000, util=0.3, expected_end=600.0, job_id=11, stop_s=300.0, stopping=True),
        RunningJob("a", (1,), 23000, util=0.3, expected_end=150000.0, job_id=12),
    ]

    decision = schedule([big, busy, light], nodes, now=0, running=running, making_room={1})

    assert [(p.job_id, p.gpu_indices) for p in decision.placements] == [(3, (0,))]
    assert decision.waiting[2].reason.endswith("held for job 1, which waits longer")
    # Without a room being made for it, job 1's reservation takes backfill that leaves it the memory.
    assert [p.job_id for p in schedule([big, busy, light], nodes, now=0, running=running).placements] == [2, 3]


def test_the_room_made_for_a_job_goes_to_it_before_a_job_moved_out_of_its_way() -> None:
    """GPU 1's jobs were stopped for job 1 (21,929 MB); job 2, one of them and the longer, was moved to resume on
    GPU 0. Both are queued again, making room: the larger request goes first, so job 2 does not take GPU 1
    back (seed 29 at 1.6 did so: a room made and lost)."""
    big = PendingJob(1, 21929, util=0.855, duration_s=98310)
    moved = PendingJob(2, 12331, util=0.174, duration_s=99331)
    nodes = [NodeState("a", 8, (GpuState(0, 21589, util=0.88), GpuState(1, 24576)))]
    running = [RunningJob("a", (0,), 2987, util=0.88, expected_end=80000.0, job_id=10)]

    placements = schedule([big, moved], nodes, now=0, running=running, making_room={1, 2}).placements

    assert sorted((p.job_id, p.gpu_indices) for p in placements) == [(1, (1,)), (2, (0,))]


def test_a_big_critical_job_preempts_the_checkpointed_small_jobs_of_one_gpu_rather_than_wait() -> None:
    """A 22000 MB job of 100000 s fits on neither 24000 MB GPU before t=20000, when GPU 1's two small jobs
    end; waiting, it would end at 120000, long after every running job (30000). So it stops GPU 1's jobs,
    the 6000 MB one alone being room enough (fewest MB), and not GPU 0's, which has no checkpoint."""
    big = PendingJob(1, 22000, util=0.5, duration_s=100000)
    nodes = [NodeState("a", 8, (GpuState(0, 20000, util=0.5), GpuState(1, 16000, util=1.0)))]

    def running(end: float = 20000.0, stop: float | None = 300.0) -> list[RunningJob]:
        return [
            RunningJob("a", (0,), 4000, util=0.5, expected_end=30000.0, job_id=10),
            RunningJob("a", (1,), 6000, util=0.5, expected_end=end, job_id=11, stop_s=stop),
            RunningJob("a", (1,), 2000, util=0.5, expected_end=end, job_id=12, stop_s=stop),
        ]

    decision = schedule([big], nodes, now=0, running=running())

    assert decision.placements == []
    assert decision.preemptions == [Preemption(1, "a", 1, (11,))]
    assert decision.waiting[1].kind == "preempting"
    assert "stopping jobs 11 on a GPU 1" in decision.waiting[1].reason
    # Not without checkpoints, nor for a short wait, nor when disabled.
    assert schedule([big], nodes, now=0, running=running(stop=None)).preemptions == []
    # Nor jobs whose epoch ends so late (long epochs) that their stop takes over half the 20000 s it saves.
    assert schedule([big], nodes, now=0, running=running(stop=9000.0)).preemptions != []
    assert schedule([big], nodes, now=0, running=running(stop=11000.0)).preemptions == []
    # With 0.7 of its run time left (PREEMPT_LEFT is 0.65), job 11 could move to GPU 0, but job 12 would stay
    # beside the big job as long: it would rather wait than share their compute.
    assert schedule([big], nodes, now=0, running=running(end=70000.0)).preemptions == []
    assert schedule([big], nodes, now=0, running=running(end=3000.0)).preemptions == []
    off = PolicyConfig(preempt=False)
    assert schedule([big], nodes, now=0, running=running(), config=off).preemptions == []


def test_a_critical_job_that_shares_a_gpu_also_makes_room_rather_than_wait() -> None:
    """A 10000 MB job of 100000 s (it could share a GPU) fits nowhere before GPU 1's two checkpointed 8000 MB
    jobs end at 20000 s, and waiting it would end long after every running job: it stops one of them, and
    the one left beside it ends within PREEMPT_LEFT of its run time. A 1000 s job alike waits: it is not critical."""
    nodes = [NodeState("a", 8, (GpuState(0, 4576, util=0.5), GpuState(1, 8576, util=1.0)))]
    running = [
        RunningJob("a", (0,), 20000, util=0.5, expected_end=30000.0, job_id=10),
        RunningJob("a", (1,), 8000, util=0.5, expected_end=20000.0, job_id=11, stop_s=300.0),
        RunningJob("a", (1,), 8000, util=0.5, expected_end=20000.0, job_id=12, stop_s=300.0),
    ]

    decision = schedule([PendingJob(1, 10000, util=0.5, duration_s=100000)], nodes, now=0, running=running)

    assert decision.preemptions == [Preemption(1, "a", 1, (11,))]
    assert "stopping jobs 11 on a GPU 1" in decision.waiting[1].reason
    # The job left beside it need not have a checkpoint: it is not stopped, only soon gone.
    beside = [*running[:2], replace(running[2], stop_s=None)]
    assert schedule([PendingJob(1, 10000, util=0.5, duration_s=100000)], nodes, now=0, running=beside).preemptions == [
        Preemption(1, "a", 1, (11,))
    ]
    short = schedule([PendingJob(1, 10000, util=0.5, duration_s=1000)], nodes, now=0, running=running)
    assert short.preemptions == [] and short.waiting[1].kind == "memory"


@pytest.mark.parametrize(("other_gpu_frees_at", "stops"), [(1500.0, False), (5000.0, True)])
def test_no_job_is_stopped_for_a_critical_job_that_would_still_rather_wait(
    other_gpu_frees_at: float, stops: bool
) -> None:
    """A 12000 MB job of 20000 s fits nowhere before GPU 1 frees. Stopping GPU 0's checkpointed job would make
    room beside a busy job (util 1.0, 4000 s left), where it would end at 23200 s: where GPU 1 frees at 1500 s,
    it would rather wait for it (21500 s), so stopping that job would lose its work for nothing. Where GPU 1
    frees at 5000 s (25000 s), the room beside the busy job is worth making."""
    nodes = [NodeState("a", 8, (GpuState(0, 2576, util=1.2), GpuState(1, 4576, util=0.5)))]
    running = [
        RunningJob("a", (0,), 8000, util=1.0, expected_end=4000.0, job_id=10),
        RunningJob("a", (0,), 14000, util=0.2, expected_end=3000.0, job_id=11, stop_s=300.0),
        RunningJob("a", (1,), 20000, util=0.5, expected_end=other_gpu_frees_at, job_id=12),
    ]

    decision = schedule([PendingJob(1, 12000, util=0.8, duration_s=20000)], nodes, now=0, running=running)

    assert decision.preemptions == ([Preemption(1, "a", 0, (11,))] if stops else [])
    assert decision.waiting[1].kind == ("preempting" if stops else "memory")


@pytest.mark.parametrize("checkpointed", [True, False])
def test_a_big_job_of_two_gpus_makes_room_on_two_gpus_at_once(checkpointed: bool) -> None:
    """A job of 2 x 22000 MB and 100000 s would wait for GPUs 1 and 2 to drain at 20000 s and end long after
    every running job (30000 s). It stops the checkpointed small jobs of both at once: room on one GPU alone
    would not start it. GPU 0's job has no checkpoint; where GPU 2's has none either, nothing stops."""
    big = PendingJob(1, 22000, gpus=2, util=0.5, duration_s=100000)
    gpus = (GpuState(0, 20576, util=0.5), GpuState(1, 18576, util=0.5), GpuState(2, 18576, util=0.5))
    nodes = [NodeState("a", 8, gpus)]
    stop = 300.0 if checkpointed else None
    running = [
        RunningJob("a", (0,), 4000, util=0.5, expected_end=30000.0, job_id=10),
        RunningJob("a", (1,), 6000, util=0.5, expected_end=20000.0, job_id=11, stop_s=300.0),
        RunningJob("a", (2,), 6000, util=0.5, expected_end=20000.0, job_id=12, stop_s=stop),
    ]

    decision = schedule([big], nodes, now=0, running=running)

    if not checkpointed:
        assert decision.preemptions == []
        return
    assert decision.preemptions == [Preemption(1, "a", 1, (11,)), Preemption(1, "a", 2, (12,))]
    assert "stopping jobs 11, 12 on a GPUs 1, 2" in decision.waiting[1].reason
    # Once they have stopped, it takes both.
    nodes = [NodeState("a", 8, (GpuState(0, 20576, util=0.5), GpuState(1, 24576), GpuState(2, 24576)))]
    placements = schedule([big], nodes, now=300, running=running[:1], making_room={1}).placements
    assert placements == [Placement(1, "a", (1, 2))]


@pytest.mark.parametrize(("left", "preempted"), [(60000.0, True), (70000.0, False)])
def test_of_two_big_jobs_the_one_with_less_left_gives_way(left: float, preempted: bool) -> None:
    """Each GPU runs a 20000 MB job; a queued 22000 MB one of 100000 s would wait for GPU 0's to end at
    60000 s and end at 160000, long after GPU 1's (90000). GPU 0's job, with under PREEMPT_LEFT (0.65) of that
    run time left, stops and resumes later, so the three end closer together; one with 70000 s left does not."""
    big = PendingJob(1, 22000, util=0.5, duration_s=100000)
    nodes = [NodeState("a", 8, (GpuState(0, 4576, util=0.5), GpuState(1, 4576, util=0.5)))]
    running = [
        RunningJob("a", (0,), 20000, util=0.5, expected_end=left, job_id=10, stop_s=300.0),
        RunningJob("a", (1,), 20000, util=0.5, expected_end=90000.0, job_id=11, stop_s=300.0),
    ]

    preemptions = schedule([big], nodes, now=0, running=running).preemptions

    assert preemptions == ([Preemption(1, "a", 0, (10,))] if preempted else [])


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("resumed", [False, True])
def test_no_job_is_stopped_twice_nor_for_a_wait_under_a_restart(resumed: bool, scale: float) -> None:
    """The two big jobs of the test above, GPU 0's giving way. Not once it has resumed (stopped once already,
    queued again or moved): with restarts that cost, two jobs giving way to each other in turn would never end.
    Nor, on a scale where the wait saved (GPU 0's job has 600 * scale s left) is under RESTART_S (600 s)."""
    big = PendingJob(1, 22000, util=0.5, duration_s=1200 * scale)
    nodes = [NodeState("a", 8, (GpuState(0, 4576, util=0.5), GpuState(1, 4576, util=0.5)))]
    running = [
        RunningJob("a", (0,), 20000, util=0.5, expected_end=600 * scale, job_id=10, stop_s=30.0, resumed=resumed),
        RunningJob("a", (1,), 20000, util=0.5, expected_end=900 * scale, job_id=11, stop_s=30.0),
    ]

    preemptions = schedule([big], nodes, now=0, running=running).preemptions

    assert preemptions == ([Preemption(1, "a", 0, (10,))] if not resumed and scale == 1.0 else [])


@pytest.mark.parametrize(("queued_s", "preempted"), [(100000.0, False), (10000.0, True)])
def test_big_jobs_give_way_only_in_the_last_round(queued_s: float, preempted: bool) -> None:
    """The same two big jobs running (GPU 0's with 60000 s left gives way, above), now with two more 22000 MB jobs
    queued: three big jobs wait for two GPUs. Where the others are as long (100000 s), a swap would only reorder a
    round that fills the GPUs anyway: nothing stops. Where they are short (10000 s), the 100000 s job alone
    outlasts all known work packed perfectly (67500 s): GPU 0's job gives way as before."""
    jobs = [PendingJob(i, 22000, util=0.5, duration_s=100000 if i == 1 else queued_s) for i in (1, 2, 3)]
    nodes = [NodeState("a", 8, (GpuState(0, 4576, util=0.5), GpuState(1, 4576, util=0.5)))]
    running = [
        RunningJob("a", (0,), 20000, util=0.5, expected_end=60000.0, job_id=10, stop_s=300.0),
        RunningJob("a", (1,), 20000, util=0.5, expected_end=90000.0, job_id=11, stop_s=300.0),
    ]

    decision = schedule(jobs, nodes, now=0, running=running)

    assert decision.preemptions == ([Preemption(1, "a", 0, (10,))] if preempted else [])
    assert decision.waiting[1].kind == ("preempting" if preempted else "memory")
    # With a GPU per big job, the last round: GPU 0's job gives way whatever the others' run times.
    three = [NodeState("a", 8, (*nodes[0].gpus, GpuState(2, 2576, util=0.5)))]
    third = RunningJob("a", (2,), 22000, util=0.5, expected_end=95000.0, job_id=12, stop_s=300.0)
    assert schedule(jobs, three, now=0, running=[*running, third]).preemptions[:1] == [Preemption(1, "a", 0, (10,))]


@pytest.mark.parametrize("room_elsewhere", [True, False])
def test_a_long_job_in_a_big_jobs_way_moves_to_another_gpu(room_elsewhere: bool) -> None:
    """Each GPU runs a 5000 MB job with 150,000 s left: a queued 22,000 MB job of 100,000 s would wait for one
    to end. Too long to be stopped and queued (over half the big job's run time), GPU 0's job moves instead: it
    resumes at once on GPU 1, where it fits, and the big job takes GPU 0. Where it fits nowhere else, nothing
    is stopped."""
    big = PendingJob(1, 22000, util=0.5, duration_s=100000)
    free_1 = 19576 if room_elsewhere else 4576
    nodes = [NodeState("a", 8, (GpuState(0, 19576, util=0.3), GpuState(1, free_1, util=0.3)))]
    running = [
        RunningJob("a", (0,), 5000, util=0.3, expected_end=150000.0, job_id=10, stop_s=300.0),
        RunningJob("a", (1,), 24576 - free_1, util=0.3, expected_end=150000.0, job_id=11, stop_s=300.0),
    ]

    preemptions = schedule([big], nodes, now=0, running=running).preemptions

    if not room_elsewhere:
        assert preemptions == []
        return
    assert preemptions == [Preemption(1, "a", 0, (10,)), Preemption(10, "a", 1, (10,))]
    # Not a job that has resumed already: it is never stopped again.
    resumed = [replace(job, resumed=True) for job in running]
    assert schedule([big], nodes, now=0, running=resumed).preemptions == []
    # Once it has stopped, both are placed first (making_room): the big job where it stopped, the other beside
    # GPU 1's job.
    moved = PendingJob(10, 5000, util=0.3, duration_s=150000)
    nodes = [NodeState("a", 8, (GpuState(0, 24576), GpuState(1, 19576, util=0.3)))]
    placements = schedule([big, moved], nodes, now=300, running=running[1:], making_room={1, 10}).placements
    assert sorted((p.job_id, p.gpu_indices) for p in placements) == [(1, (0,)), (10, (1,))]


@pytest.mark.parametrize(("stop_0", "stop_1", "gpu"), [(250.0, 20.0, 1), (20.0, 250.0, 0)])
def test_of_two_rooms_alike_a_preemption_takes_the_one_whose_job_stops_sooner(
    stop_0: float, stop_1: float, gpu: int
) -> None:
    """Stopping either GPU's 8000 MB job makes room for a 22000 MB job: the one whose epoch ends sooner stops
    (it loses no work either way, and the room comes sooner)."""
    big = PendingJob(1, 22000, util=0.5, duration_s=100000)
    nodes = [NodeState("a", 8, (GpuState(0, 16576, util=0.5), GpuState(1, 16576, util=0.5)))]
    running = [
        RunningJob("a", (0,), 8000, util=0.5, expected_end=20000.0, job_id=10, stop_s=stop_0),
        RunningJob("a", (1,), 8000, util=0.5, expected_end=20000.0, job_id=11, stop_s=stop_1),
    ]

    [preemption] = schedule([big], nodes, now=0, running=running).preemptions

    assert (preemption.gpu, preemption.job_ids) == (gpu, (10 + gpu,))


@pytest.mark.parametrize("stopping", [False, True])
def test_a_preemption_stays_on_the_gpu_whose_jobs_are_already_stopping(stopping: bool) -> None:
    """Stopping GPU 1's 4000 MB job makes room with fewer MB than GPU 0's 8000 MB one; but once GPU 0's job
    was preempted (it is finishing its epoch), room there costs nothing more: no second GPU's jobs stop."""
    big = PendingJob(1, 22000, util=0.5, duration_s=100000)
    nodes = [NodeState("a", 8, (GpuState(0, 14000, util=0.5), GpuState(1, 18000, util=0.5)))]
    running = [
        RunningJob("a", (0,), 8000, util=0.5, expected_end=20000.0, job_id=10, stop_s=60.0, stopping=stopping),
        RunningJob("a", (1,), 4000, util=0.5, expected_end=20000.0, job_id=11, stop_s=60.0),
    ]

    [preemption] = schedule([big], nodes, now=0, running=running).preemptions

    assert (preemption.gpu, preemption.job_ids) == ((0, (10,)) if stopping else (1, (11,)))


def two_stacked(**fields: object) -> tuple[list[NodeState], list[RunningJob]]:
    """GPU 0 runs two jobs at 0.9 (1.8 together: each at 1/1.8 of its speed), with 100,000 and 50,000 solo
    seconds left; GPU 1 one at 0.5 ending at 10,000 s. Packed perfectly the known work would end by 124,000 s,
    but GPU 0's ends at 140,000 s."""
    nodes = [NodeState("a", 8, (GpuState(0, 14000, util=1.8), GpuState(1, 20000, util=0.5)))]
    running = [
        RunningJob("a", (0,), 5000, util=0.9, expected_end=180000.0, job_id=10, stop_s=300.0, **fields),  # type: ignore[arg-type]
        RunningJob("a", (0,), 5000, util=0.9, expected_end=90000.0, job_id=11, stop_s=300.0, **fields),  # type: ignore[arg-type]
        RunningJob("a", (1,), 4000, util=0.5, expected_end=10000.0, job_id=12, stop_s=300.0),
    ]
    return nodes, running


def test_a_checkpointed_job_moves_off_the_gpu_whose_work_would_end_last() -> None:
    """Moving job 11 (50,000 s left: it stops at the end of its epoch, losing nothing) to GPU 1 has GPU 0 end
    at 100,000 s and GPU 1 at about 54,000 s; moving job 10 instead would end at about 104,000 s. The move is
    job 11's."""
    nodes, running = two_stacked()

    decision = schedule([], nodes, now=0, running=running)

    assert decision.preemptions == [Preemption(11, "a", 1, (11,))]
    assert decision.preemptions[0].move


@pytest.mark.parametrize(
    "fields",
    [
        {"stop_s": None},  # no epoch of its own yet
        {"resumed": True},  # moved or preempted once already
        {"stopping": True},  # stopping already
    ],
)
def test_a_job_without_a_checkpoint_or_moved_before_stays(fields: dict[str, object]) -> None:
    nodes, running = two_stacked()
    running[:2] = [replace(job, **fields) for job in running[:2]]  # type: ignore[arg-type]

    assert schedule([], nodes, now=0, running=running).preemptions == []


def test_no_job_moves_where_the_gpus_work_ends_together_or_onto_a_reserved_gpu() -> None:
    """With GPU 1 as busy as GPU 0 the known work ends together: nothing moves. With GPU 1 held for the head
    of the queue (a 20,000 MB job waiting for it to drain), nothing moves there either."""
    nodes, running = two_stacked()
    busy = [*running[:2], replace(running[2], util=0.9, expected_end=140000.0)]
    assert (
        schedule(
            [], [replace(nodes[0], gpus=(nodes[0].gpus[0], GpuState(1, 20000, util=0.9)))], 0, running=busy
        ).preemptions
        == []
    )

    head = PendingJob(1, 20000, util=0.3, duration_s=1000)
    crowded = [replace(nodes[0], gpus=(nodes[0].gpus[0], GpuState(1, 16000, util=0.5)))]
    assert schedule([], crowded, now=0, running=running).preemptions == [Preemption(11, "a", 1, (11,))]
    decision = schedule([head], crowded, now=0, running=running)

    assert decision.waiting[head.id].kind == "memory" and decision.preemptions == []
