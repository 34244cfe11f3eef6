"""The simulator: same policy code as the live scheduler, four policies, feasible schedules."""

import csv
import json
import math
import random
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest

from app.scheduler.state import Preemption
from app.simulator import engine
from app.simulator.engine import CONFIGS, POLICIES, Attempt, Estimates, Result, Simulation
from app.simulator.fluid import fluid_bound
from app.simulator.report import (
    attempts_by_gpu,
    big_jobs_end,
    infeasibilities,
    schedule_rows,
    soonest_end,
    summarise,
    uses_ledger,
    work_done,
)
from app.simulator.trace import (
    TraceError,
    TraceJob,
    bound_terms,
    load_trace,
    lower_bound,
    whole_gpu_bound,
    write_trace,
)
from app.simulator.workload import generate
from tests.conftest import REPO

GPUS = [24576] * 4


@pytest.fixture(scope="module")
def trace() -> list[TraceJob]:
    return generate(300, 1.6, GPUS, seed=11)


@pytest.fixture(scope="module")
def runs(trace: list[TraceJob]) -> dict[str, dict]:
    out = {}
    for policy in POLICIES:
        sim = Simulation(trace, GPUS, policy=policy)
        result = sim.run()
        out[policy] = {"figures": summarise(sim, result), "rows": schedule_rows(sim, result)}
    return out


def test_every_schedule_is_feasible(trace: list[TraceJob], runs: dict[str, dict]) -> None:
    for policy, run in runs.items():
        assert infeasibilities(trace, run["rows"], GPUS, uses_ledger(policy)) == [], policy


def test_ledger_policies_never_oom_because_of_another_job(runs: dict[str, dict]) -> None:
    for policy in ("vramq", "fifo-ledger", "exclusive"):
        assert runs[policy]["figures"]["oom_caused_by_others"] == 0
        assert runs[policy]["figures"]["completed"] == 300
    assert runs["free-memory"]["figures"]["oom_caused_by_others"] > 0  # no ledger: jobs grow into each other


def test_vramq_packs_close_to_the_bound_and_beats_exclusive(runs: dict[str, dict]) -> None:
    vramq, exclusive = runs["vramq"]["figures"], runs["exclusive"]["figures"]

    assert vramq["makespan_s"] >= vramq["lower_bound_s"]  # the bound is a bound
    assert vramq["makespan_over_bound"] < exclusive["makespan_over_bound"]
    assert vramq["mean_jct_s"] < exclusive["mean_jct_s"]  # by how much, per trace: bench/policies.py


def test_a_light_user_is_not_stuck_behind_a_heavy_backlog() -> None:
    heavy = [TraceJob(f"h{i}", 0.0, "heavy", 6000, 5000, 1000.0, 0.3) for i in range(100)]
    light = [TraceJob(f"l{i}", 10.0, "light", 6000, 5000, 1000.0, 0.3) for i in range(5)]
    sim = Simulation(heavy + light, GPUS, policy="vramq")
    result = sim.run()

    starts = {a.job.job_id: a.start for a in result.attempts}
    first_free_slot = min(a.end for a in result.attempts if a.start == 0.0 and a.end is not None)
    assert max(starts[f"l{i}"] for i in range(5)) <= first_free_slot + 1e-6
    fifo = Simulation(heavy + light, GPUS, policy="fifo-ledger")
    fifo_starts = {a.job.job_id: a.start for a in fifo.run().attempts}
    assert min(fifo_starts[f"l{i}"] for i in range(5)) > first_free_slot  # without fair share they wait


def test_what_the_policy_knows_of_a_queued_job_is_set_by_the_estimates() -> None:
    """Two jobs of utilisation 0.9 share a GPU's memory easily. Known to be busy, the second waits rather
    than take the GPU to 1.8; as first runs (0.5 each, until measured) both start and share compute."""
    jobs = [TraceJob(f"j{i}", 0.0, "u", 6000, 5000, 1000.0, 0.9) for i in range(2)]

    known = Simulation(jobs, [24576]).run()
    first_runs = Simulation(jobs, [24576], estimates=Estimates(util_known=False)).run()

    assert [(a.start, a.end) for a in known.attempts] == [(0.0, 1000.0), (1000.0, 2000.0)]
    assert [(a.start, a.end) for a in first_runs.attempts] == [(0.0, pytest.approx(1800.0))] * 2


def test_without_history_a_job_learns_the_load_of_its_fingerprints_first_job() -> None:
    """No history: the first busy job starts at an expected 0.5. Once it runs, a later job of the same
    user and request (one fingerprint) is known to be as busy and waits rather than take the GPU to 1.8;
    a job of another request is still a first run (0.5) and starts beside it."""
    first = TraceJob("first", 0.0, "u", 6000, 5000, 1000.0, 0.9)
    sibling = TraceJob("sibling", 100.0, "u", 6000, 5000, 1000.0, 0.9)
    stranger = TraceJob("stranger", 100.0, "u", 6001, 5000, 1000.0, 0.9)
    no_history = Estimates(util_known=False)

    with_sibling = Simulation([first, sibling], [24576], estimates=no_history).run()
    with_stranger = Simulation([first, stranger], [24576], estimates=no_history).run()

    assert [a.start for a in with_sibling.attempts] == [0.0, 1000.0]
    assert [a.start for a in with_stranger.attempts] == [0.0, 100.0]


def test_a_long_job_known_only_by_its_time_limit_does_not_stack_onto_a_saturated_gpu() -> None:
    """A busy job holds the GPU until t=500; a 4000 s job of utilisation 0.9 arriving at t=1 is most of the
    known work, so it goes first. Its run time known, it starts at once at a load of 1.9, past the cap
    (it ends at 4450 s, before waiting would let it: 4500 s). With only a time limit (--limit-factor 1:
    the limit is its true run time, but the policy cannot know that), it waits for the GPU to free up."""
    jobs = [TraceJob("busy", 0.0, "u", 4000, 4000, 500.0, 1.0), TraceJob("long", 1.0, "v", 4000, 4000, 4000.0, 0.9)]

    known = Simulation(jobs, [24576]).run()
    limited = Simulation(jobs, [24576], estimates=Estimates(limit_factor=1.0)).run()

    assert [a.start for a in known.attempts] == [0.0, 1.0]
    assert [a.start for a in limited.attempts] == [0.0, pytest.approx(500.0)]


def small_jobs_and_a_big_one() -> list[TraceJob]:
    """Four 6000 MB jobs of 20000 s (utilisation 0.4) at t=0 on two GPUs, then a 22000 MB job of 100000 s at
    t=1000: it preempts two of them (see the test below)."""
    small = [TraceJob(f"s{i}", 0.0, "u", 6000, 6000, 20000.0, 0.4) for i in range(4)]
    return [*small, TraceJob("big", 1000.0, "v", 22000, 22000, 100000.0, 0.5)]


def test_a_big_job_preempts_small_ones_that_resume_elsewhere_from_their_checkpoint() -> None:
    """Two small jobs on each GPU until t=20000; a 22000 MB job of 100000 s arrives at t=1000. Waiting, it
    would end at 120000. It stops GPU 0's jobs instead: they run on to the end of their epoch (t=1200), stop
    there and resume on GPU 1 at once from that epoch's checkpoint, redoing nothing and using no retry
    (max_retries 0); it starts as they stop and ends at 101200."""
    jobs = small_jobs_and_a_big_one()

    sim = Simulation(jobs, [24576] * 2, max_retries=0)
    result = sim.run()
    waited = Simulation(jobs, [24576] * 2, config=replace(CONFIGS["vramq"], preempt=False)).run()

    assert result.finished[4] == (pytest.approx(101200.0), True)
    assert waited.finished[4] == (pytest.approx(120000.0), True)
    assert all(ok for _, ok in result.finished.values())
    rows = schedule_rows(sim, result)
    assert sorted((r["job_id"], r["attempt"], r["outcome"]) for r in rows if r["job_id"] != "big") == [
        ("s0", 1, "preempted"),
        ("s0", 2, "succeeded"),
        ("s1", 1, "preempted"),
        ("s1", 2, "succeeded"),
        ("s2", 1, "succeeded"),
        ("s3", 1, "succeeded"),
    ]
    resumed = [a for a in result.attempts if a.number == 2]
    assert [a.start for a in resumed] == [pytest.approx(1200.0)] * 2
    assert [a.done for a in resumed] == [pytest.approx(20000.0)] * 2
    on = attempts_by_gpu(result)  # what they had done when they resumed: all of it, to their epoch's end
    assert [work_done(a, 1200.0, on) for a in resumed] == [pytest.approx(1200.0)] * 2
    [stopped] = [a for a in result.attempts if a.job.job_id == "s0" and a.number == 1]
    assert stopped.end == pytest.approx(1200.0)
    assert result.preemptions == 2
    assert infeasibilities(jobs, rows, [24576] * 2, ledger=True) == []


def test_a_restart_costs_the_resumed_jobs_its_seconds_of_work() -> None:
    """The same preemption with a restart of 300 s: s0 and s1 resume at t=1200 from 900 s of work, not 1200.
    All four small jobs share GPU 1 (load 1.6) until s2 and s3 end at 1200 + 18800 * 1.6 = 31280, where without
    the restart s0 and s1 end with them; they end 300 s later, the big job as before."""
    jobs = small_jobs_and_a_big_one()

    free = Simulation(jobs, [24576] * 2).run()
    costly = Simulation(jobs, [24576] * 2, restart_s=300.0).run()

    assert [a.done for a in costly.attempts if a.number == 2] == [pytest.approx(20000.0)] * 2
    assert [a.resumed for a in costly.attempts if a.number == 2] == [pytest.approx(900.0)] * 2
    assert [free.finished[i][0] for i in range(5)] == pytest.approx([31280.0] * 4 + [101200.0])
    assert [costly.finished[i][0] for i in range(5)] == pytest.approx([31580.0] * 2 + [31280.0] * 2 + [101200.0])
    for wrong in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="restart cost"):
            Simulation(jobs, [24576] * 2, restart_s=wrong)


def test_with_restarts_dearer_than_an_epoch_no_job_is_stopped_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A generated trace where, with a restart of 900 s (three epochs), short jobs too big to share a GPU gave way to
    each other in turn without end: each resumed further from its end than the one it then stopped. A job that has
    resumed is never stopped again, so the replay ends, every job once stopped at most."""
    decisions = 0
    schedule = engine.schedule

    def bounded(*args: object, **kwargs: object) -> object:
        nonlocal decisions
        decisions += 1
        assert decisions < 20000, "the replay does not end"
        return schedule(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "schedule", bounded)
    trace = generate(300, 1.6, [24576] * 4, seed=34)

    result = Simulation(trace, [24576] * 4, restart_s=900.0).run()

    assert len(result.finished) == len(trace)
    stops = Counter(a.index for a in result.attempts if a.outcome == "preempted")
    assert stops and max(stops.values()) == 1


def test_a_replaced_setting_is_the_one_the_policy_uses() -> None:
    """The same two busy jobs: without a compute cap, the second starts beside the first (bench/targets.py
    --set compute_cap=none)."""
    jobs = [TraceJob(f"j{i}", 0.0, "u", 6000, 5000, 1000.0, 0.9) for i in range(2)]

    uncapped = Simulation(jobs, [24576], config=replace(CONFIGS["vramq"], compute_cap=None)).run()

    assert [(a.start, a.end) for a in uncapped.attempts] == [(0.0, pytest.approx(1800.0))] * 2
    with pytest.raises(ValueError, match="no settings"):
        Simulation(jobs, [24576], policy="exclusive", config=CONFIGS["vramq"])


def test_a_jobs_wait_is_split_by_what_it_lacked() -> None:
    """bench/targets.py --explain: two busy jobs cannot share compute under the cap; a 20 GiB job arriving
    at t=10 finds no GPU with that much memory until both have ended."""
    busy = [TraceJob(f"j{i}", 0.0, "u", 6000, 5000, 1000.0, 0.9) for i in range(2)]
    big = TraceJob("big", 10.0, "v", 20000, 5000, 10.0, 0.1)

    result = Simulation([*busy, big], [24576]).run()

    assert [a.start for a in result.attempts] == [0.0, 1000.0, 2000.0]
    assert result.waited == {1: {"compute": 1000.0}, 2: {"memory": 1990.0}}


def test_the_soonest_end_a_job_could_have_had_from_its_arrival() -> None:
    """bench/targets.py --explain: the second busy job waited for compute and ended at 2000; sharing the GPU
    from t=0 (both at 1/1.8 of their speed) would have ended it at 1800. The 20 GiB job, arriving at t=10
    while only the first ran, could have started when that one ended and ended at 1010, not 2010."""
    busy = [TraceJob(f"j{i}", 0.0, "u", 6000, 5000, 1000.0, 0.9) for i in range(2)]
    big = TraceJob("big", 10.0, "v", 20000, 5000, 10.0, 0.1)
    sim = Simulation([*busy, big], [24576])
    result = sim.run()

    assert [result.finished[i][0] for i in range(3)] == [1000.0, 2000.0, 2010.0]
    assert soonest_end(sim, result, 1) == pytest.approx(1800.0)
    assert soonest_end(sim, result, 2) == pytest.approx(1010.0)


def test_no_job_ends_sooner_than_its_soonest_end() -> None:
    """The schedule the policy made is one of those the bound ranges over: no job beats it, some meet it."""
    trace = generate(120, 1.6, [24576] * 4, seed=3)
    sim = Simulation(trace, [24576] * 4)
    result = sim.run()

    once = [i for i, (_, ok) in result.finished.items() if ok and sum(a.index == i for a in result.attempts) == 1]
    ratios = [(soonest_end(sim, result, i) or 0.0) / result.finished[i][0] for i in once]
    assert len(ratios) > 100
    assert max(ratios) == pytest.approx(1.0)  # a job started on arrival and never slowed
    assert min(ratios) < 0.9  # and some could have ended much sooner


def test_the_soonest_jobs_too_big_to_share_a_gpu_could_all_end() -> None:
    """bench/targets.py --explain: three 20 GiB jobs arrive at t=10 while a 6 GB job holds GPU 0 until 1000.
    No two share a GPU and none fits beside it: however they are split, the last ends no sooner than 310
    (all three on GPU 1), which is what the policy did."""
    small = TraceJob("small", 0.0, "u", 6000, 5000, 1000.0, 0.5)
    big = [TraceJob(f"big{i}", 10.0, "v", 20000, 20000, 100.0, 0.5) for i in range(3)]
    sim = Simulation([small, *big], [24576, 24576])
    result = sim.run()

    assert big_jobs_end(sim, result, 10.0) == pytest.approx(310.0)
    assert max(result.finished[i][0] for i in (1, 2, 3)) == pytest.approx(310.0)
    assert big_jobs_end(sim, result, 2000.0) == 2000.0  # none left to start


def test_no_schedule_ends_the_big_jobs_sooner_than_the_bound() -> None:
    """The policy's schedule is one of those the bound ranges over: from every moment, the big jobs not
    started yet end no sooner than big_jobs_end says."""
    trace = generate(150, 1.6, [24576] * 4, seed=21)
    sim = Simulation(trace, [24576] * 4)
    result = sim.run()
    big = [i for i, job in sim.trace if job.vram_mb > 24576 / 2]
    moments = sorted({sim.trace[0][1].submit_s, *(result.first_start[i] - 1.0 for i in big)})

    ratios = []
    for moment in moments:
        left = [i for i in big if result.first_start[i] > moment]
        ratios.append(big_jobs_end(sim, result, moment) / max(result.finished[i][0] for i in left))
    assert len(ratios) > 10
    assert max(ratios) <= 1.0 + 1e-9
    assert max(ratios) > 0.8  # and it is not trivially loose


def test_oom_retries_grow_the_request_under_a_ledger() -> None:
    liar = TraceJob("liar", 0.0, "a", 4000, 9000, 100.0, 0.5)
    sim = Simulation([liar], GPUS, policy="vramq")
    result = sim.run()

    assert [(a.request_mb, a.outcome) for a in result.attempts] == [(4000, "oom"), (6000, "oom"), (9000, "succeeded")]


def test_an_oom_grows_the_queued_jobs_alike_under_a_ledger() -> None:
    """Three jobs alike (one user, one request: a sweep's fingerprint) need 13000 MB but ask for 12000: two start
    and run out of memory; the third, queued then, asks for their grown request and runs once. Another user's
    job of that request keeps it (it fits its peak)."""
    sweep = [TraceJob(f"s{i}", 0.0, "a", 12000, 13000, 100.0, 0.5) for i in range(3)]
    other = TraceJob("o", 1.0, "b", 12000, 11000, 100.0, 0.5)
    result = Simulation([*sweep, other], [24576], policy="vramq").run()

    attempts = {job.job_id: [] for job in [*sweep, other]}
    for attempt in result.attempts:
        attempts[attempt.job.job_id].append((attempt.request_mb, attempt.outcome))
    assert attempts["s0"] == attempts["s1"] == [(12000, "oom"), (18000, "succeeded")]
    assert attempts["s2"] == [(18000, "succeeded")]
    assert attempts["o"] == [(12000, "succeeded")]


@pytest.mark.parametrize(
    ("done", "resumed", "stops_at"),
    [
        (2000.0, 0.0, 2100.0),  # runs on to the end of its epoch under way (epochs of EPOCH_S from its start)
        (2100.0, 0.0, 2100.0),  # at the end of one: stops at once
        (2100.0, 1700.0, 2300.0),  # epochs counted from the checkpoint it resumed from
        (1800.0, 1700.0, 2000.0),  # not an epoch of its own yet: at the end of its first
        (1700.0, 1700.0, 1700.0),  # stopped as it resumed: loses nothing
    ],
)
def test_a_preempted_attempt_stops_at_the_end_of_its_epoch_and_keeps_its_work(
    done: float, resumed: float, stops_at: float
) -> None:
    """As autolog does live: a preempted attempt stops at its next checkpoint and resumes from it. The room is
    made once it has stopped."""
    job = TraceJob("j", 0.0, "a", 4000, 3000, 10000.0, 0.5)
    sim = Simulation([job], GPUS, policy="vramq")
    attempt = Attempt(job, 0, 1, 4000, 0, (0,), 0.0, done, resumed, int(resumed > 0))
    sim.running.append(attempt)
    sim.on[0, 0].append(attempt)

    sim._make_room(Preemption(1, "0", 0, (0,)))  # for a job 1 (not in the trace)
    if attempt.end is None:  # running on to the end of its epoch: the room is not made yet
        assert sim.room[1].made is None and attempt.stop_at == pytest.approx(stops_at)
        sim.now, attempt.done = 60.0, stops_at
        sim._settle(set())

    assert attempt.outcome == "preempted" and attempt.end == sim.now
    assert [w.done for w in sim.waiting] == [pytest.approx(stops_at)]
    assert sim.room[1].made == sim.now


def finishing(sim: Simulation, seconds: int = 20) -> Result:
    """sim.run(), failing the test instead of hanging if the clock stops advancing."""

    def stuck(*_: object) -> None:
        raise AssertionError(f"the simulation did not finish in {seconds} s")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(seconds)
    try:
        return sim.run()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("policy", POLICIES)
def test_an_event_closer_than_the_clock_can_resolve_is_still_reached(policy: str) -> None:
    """A 1 ms job reaches its cap 50 us after it starts at t = 484.5 s: the clock, rounded, stopped just short of
    the memory the cap is at, and the next event came back as 'now' for ever."""
    tiny = TraceJob("tiny", 484.498722612494, "a", 24000, 48000, 0.001, 1e-6)
    sim = Simulation([tiny], [24576, 24576], policy=policy)
    result = finishing(sim)

    assert [a.outcome for a in result.attempts] == ["oom"] * 4  # the first attempt and its 3 retries
    assert result.finished == {0: (pytest.approx(484.4988, abs=1e-3), False)}


def test_jobs_that_overflow_a_gpu_within_the_clocks_rounding_are_still_killed() -> None:
    twins = [TraceJob(f"t{i}", 484.498722612494, "a", 12000, 14000, 0.001 * (1 + i / 7), 1e-6) for i in range(2)]
    sim = Simulation(twins, [24576], policy="free-memory")
    result = finishing(sim)

    assert [(a.job.job_id, a.outcome) for a in result.attempts][:2] == [("t0", "oom"), ("t1", "succeeded")]
    assert [ok for _, ok in result.finished.values()] == [True, True]


@pytest.mark.parametrize("seed", range(3))
def test_any_valid_trace_ends_with_every_job_accounted_for_once_and_a_feasible_schedule(seed: int) -> None:
    """Random traces at the format's edges (ms-long jobs, peaks far over requests or 0, requests over a
    GPU, more GPUs than a node has, tied submissions): the external checks replay traces we have not seen."""
    rng = random.Random(seed)
    for _ in range(40):
        sizes = rng.choice([[16384], [24576] * 2, [24576] * 4, [10240] * 3, [24576, 12288]])
        nodes = rng.choice([1, 2, 3])
        jobs = [
            TraceJob(
                f"j{i}",
                rng.choice([0.0, float(i), rng.uniform(0, 1000)]),
                rng.choice("abc"),
                vram := rng.choice([1, 100, 2000, 8000, 12000, 16384, 24000, 24576, 30000]),
                int(vram * rng.choice([0, 0.5, 1.0, 1.2, 2.0])),
                rng.choice([0.001, 1.0, 60.0, 5000.0, rng.uniform(1, 1e5)]),
                rng.choice([1e-6, 0.2, 0.5, 1.0]),
                gpus=rng.choice([1, 1, 1, 2, 3, 5]),
            )
            for i in range(rng.randint(0, 30))
        ]
        for policy in POLICIES:
            sim = Simulation(jobs, sizes, nodes=nodes, policy=policy)
            result = finishing(sim)
            figures = summarise(sim, result)

            assert figures["completed"] + figures["failed"] + figures["refused"] == len(jobs), policy
            assert infeasibilities(jobs, schedule_rows(sim, result), sizes, uses_ledger(policy)) == [], policy


def test_lower_bound_terms() -> None:
    jobs = [TraceJob("a", 0.0, "u", 24576, 1, 100.0, 1.0), TraceJob("b", 50.0, "u", 24576, 1, 10.0, 1.0)]

    assert lower_bound(jobs, gpu_count=1, total_mb=24576) == 110.0  # memory area after t=0
    assert lower_bound(jobs, gpu_count=2, total_mb=2 * 24576) == 100.0  # the longest job
    assert bound_terms(jobs, gpu_count=2, total_mb=2 * 24576) == {"longest job": 100.0, "memory": 55.0, "compute": 55.0}


def test_jobs_too_big_to_share_a_gpu_set_a_tighter_bound() -> None:
    """Four 20,000 MB jobs of 100 s on one 24,576 MB GPU run one after another: 400 s, where the published
    bound counts their memory-time, 4 x 20,000 x 100 / 24,576 = 325.5 s."""
    sweep = [TraceJob(f"b{i}", 0.0, "u", 20000, 1, 100.0, 0.2) for i in range(4)]
    beside = TraceJob("s", 0.0, "u", 4000, 1, 50.0, 1.0)  # fits beside one of them: adds nothing
    apart = TraceJob("o", 0.0, "u", 8000, 1, 50.0, 0.5)  # fits beside none: adds its compute (25 s) or memory (16 s)
    late = TraceJob("l", 1000.0, "u", 13000, 1, 10.0, 0.2)  # released after the rest: on its own, 1,010 s

    assert lower_bound(sweep, 1, 24576) == pytest.approx(325.5, abs=0.1)
    assert whole_gpu_bound(sweep, 1, 24576) == 400.0
    assert whole_gpu_bound([*sweep, beside], 1, 24576) == 400.0
    assert whole_gpu_bound([*sweep, apart], 1, 24576) == 425.0
    assert whole_gpu_bound([*sweep, late], 1, 24576) == 1010.0
    assert whole_gpu_bound(sweep, 2, 24576) == 200.0
    assert whole_gpu_bound([beside, apart], 1, 24576) == 0.0  # no job over half a GPU


def test_the_fluid_bound_holds_memory_and_compute_at_once() -> None:
    """Two jobs of half a GPU's memory hold it from 0 to 100 s at full speed; a compute-bound job arrives at
    50 s. Each term of the published bound is met alone (its compute after 50 s: 50 + 100 = 150 s), but the
    two jobs have at least 50 s of work left at 50 s, whose compute (5 s) comes on top: 155 s."""
    half = [TraceJob(f"h{i}", 0.0, "u", 12288, 1, 100.0, 0.05) for i in range(2)]
    busy = TraceJob("c", 50.0, "u", 2000, 1, 100.0, 1.0)
    jobs = (*half, busy)

    assert lower_bound(list(jobs), 1, 24576) == 150.0
    assert whole_gpu_bound(list(jobs), 1, 24576) == 0.0  # no job over half a GPU
    assert fluid_bound(jobs, 1, 24576) == pytest.approx(155.0)
    result = Simulation(list(jobs), [24576], policy="vramq").run()
    assert max(end for end, _ in result.finished.values()) >= 155.0
    # It holds the whole-GPU rows of whole_gpu_bound in each interval: the sweep of four 20,000 MB jobs.
    sweep = tuple(TraceJob(f"b{i}", 0.0, "u", 20000, 1, 100.0, 0.2) for i in range(4))
    assert fluid_bound(sweep, 1, 24576) == pytest.approx(400.0)
    # Three jobs of over a third of a GPU: two at a time at most, 300 s of progress in 150 s at least, where the
    # published bound counts their memory-time only (110 s).
    thirds = [TraceJob(f"t{i}", 0.0, "u", 9000, 1, 100.0, 0.1) for i in range(3)]
    assert lower_bound(thirds, 1, 24576) == pytest.approx(109.9, abs=0.1)
    assert fluid_bound(tuple(thirds), 1, 24576) == pytest.approx(150.0)


def test_no_policy_ends_a_trace_before_the_tighter_bounds() -> None:
    """The bounds are bounds: on generated traces where they are well above the published one (whole_gpu_bound
    by 7% to 17% on seeds 16, 21 and 31: sweeps of jobs over half a GPU; fluid_bound by 3% on seeds 20 and 26),
    every policy's simulated makespan is at or above them."""
    for seed in (16, 21, 31, 20, 26):
        trace = generate(300, 1.6, GPUS, seed=seed)
        published = lower_bound(trace, len(GPUS), sum(GPUS))
        whole = whole_gpu_bound(trace, len(GPUS), max(GPUS))
        fluid = fluid_bound(tuple(trace), len(GPUS), max(GPUS))
        bound = max(whole, fluid)
        if seed in (16, 21, 31):
            assert whole > 1.05 * published
        else:
            assert fluid > 1.025 * max(published, whole)
        for policy in ("vramq", "exclusive", "fifo-ledger"):
            result = Simulation(trace, GPUS, policy=policy).run()
            assert len(result.finished) == len(trace) and all(ok for _, ok in result.finished.values()), policy
            assert max(end for end, _ in result.finished.values()) >= bound, (seed, policy)


def test_traces_round_trip_and_bad_ones_are_refused(tmp_path: Path) -> None:
    jobs = generate(20, 1.0, GPUS, seed=3)
    write_trace(tmp_path / "t.csv", jobs)
    assert [j.job_id for j in load_trace(tmp_path / "t.csv")] == [j.job_id for j in jobs]
    (tmp_path / "bad.csv").write_text("job_id,submit_s,user,vram_mb,peak_mb,duration_s,util\nx,0,u,100,50,10,1.5\n")
    with pytest.raises(TraceError, match="util"):
        load_trace(tmp_path / "bad.csv")


HEADER = "job_id,submit_s,user,vram_mb,peak_mb,duration_s,util\n"


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ("x,0,u,100,50,nan,0.5", "'nan' is not a finite number"),  # replayed for ever before
        ("x,0,u,inf,50,10,0.5", "'inf' is not a finite number"),  # an OverflowError traceback before
        ("x,inf,u,100,50,10,0.5", "'inf' is not a finite number"),
        ("x,0,u,100", "2: no value for peak_mb, duration_s, util"),
        ("x,0,u,100,50,10,", "no value for util"),
    ],
)
def test_a_trace_row_without_finite_values_is_refused_with_its_line(tmp_path: Path, row: str, error: str) -> None:
    (tmp_path / "bad.csv").write_text(HEADER + row + "\n")
    with pytest.raises(TraceError, match=error):
        load_trace(tmp_path / "bad.csv")


def test_a_trace_saved_by_a_spreadsheet_is_read(tmp_path: Path) -> None:
    """With a byte-order mark before the header, and the optional gpus column left blank."""
    (tmp_path / "t.csv").write_bytes(("\ufeff" + HEADER.replace("\n", ",gpus\n") + "x,0,u,100,50,10,0.5,\n").encode())
    assert load_trace(tmp_path / "t.csv") == [TraceJob("x", 0.0, "u", 100, 50, 10.0, 0.5, gpus=1)]


def simulate_cli(trace: Path, *options: str, gpus: str = "4x24GiB") -> subprocess.CompletedProcess[str]:
    """`vramq simulate --trace TRACE --gpus GPUS --json OPTIONS...` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "simulate", "--trace", str(trace), "--gpus", gpus, "--json", *options],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_cli_prints_json_and_writes_the_schedule(tmp_path: Path) -> None:
    write_trace(tmp_path / "t.csv", generate(60, 1.2, GPUS, seed=5))
    result = simulate_cli(tmp_path / "t.csv", "--policy", "vramq", "--schedule-out", str(tmp_path / "s.csv"))

    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in (
        "makespan_s",
        "lower_bound_s",
        "mean_jct_s",
        "p95_jct_s",
        "mean_wait_s",
        "p95_wait_s",
        "mem_utilization",
        "oom_failures",
        "completed",
        "failed",
        "jain_fairness",
        "users",
    ):
        assert key in figures
    assert figures["infeasible"] == [] and figures["completed"] == 60
    assert figures["tight_bound_s"] >= figures["lower_bound_s"]
    with (tmp_path / "s.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["job_id", "attempt", "node", "gpu_indices", "start_s", "end_s", "vram_mb", "outcome"]
    assert len(rows) >= 60


@pytest.mark.parametrize("policy", POLICIES)
def test_a_job_no_node_can_hold_is_refused_on_arrival_and_blocks_no_queue(policy: str) -> None:
    """As the live intake refuses it (VramUnsatisfiable): the strict FIFO policies go on past it, and the
    lower bound leaves it out (its 50,000 s would set it)."""
    too_big = TraceJob("too-big", 0.0, "a", 30000, 1000, 50000.0, 0.5)
    too_wide = TraceJob("too-wide", 0.0, "a", 1000, 1000, 50000.0, 0.5, gpus=3)
    rest = [TraceJob(f"j{i}", 1.0 + i, "b", 14000, 3000, 100.0, 0.5) for i in range(4)]
    sim = Simulation([too_big, too_wide, *rest], [24576, 24576], policy=policy)
    result = sim.run()
    figures = summarise(sim, result)

    assert result.refused == [0, 1]
    assert (figures["refused"], figures["completed"], figures["failed"]) == (2, 4, 0)
    assert sorted(a.job.job_id for a in result.attempts) == [j.job_id for j in rest]
    assert figures["lower_bound_s"] == round(lower_bound(rest, 2, 2 * 24576), 1) < 50000
    assert figures["makespan_s"] < 1000


def test_cli_charges_the_restart_cost_it_is_given(tmp_path: Path) -> None:
    """The preemption of test_a_restart_costs...: two of five jobs end 300 s later, so the mean JCT rises by
    600 / 5 s. A negative or infinite cost is refused, with no traceback."""
    write_trace(tmp_path / "t.csv", small_jobs_and_a_big_one())

    free = simulate_cli(tmp_path / "t.csv", gpus="2x24GiB")
    costly = simulate_cli(tmp_path / "t.csv", "--restart-cost", "300", gpus="2x24GiB")
    negative = simulate_cli(tmp_path / "t.csv", "--restart-cost", "-1")
    infinite = simulate_cli(tmp_path / "t.csv", "--restart-cost", "inf")

    assert free.returncode == costly.returncode == 0, free.stderr + costly.stderr
    added = json.loads(costly.stdout)["mean_jct_s"] - json.loads(free.stdout)["mean_jct_s"]
    assert added == pytest.approx(120.0, abs=0.2)
    assert negative.returncode == 2 and "Traceback" not in negative.stderr
    assert infinite.returncode == 2 and "Traceback" not in infinite.stderr and "restart cost inf" in infinite.stderr


def test_cli_names_the_refused_jobs(tmp_path: Path) -> None:
    write_trace(
        tmp_path / "t.csv", [TraceJob("huge", 0.0, "a", 90000, 1000, 10.0, 0.5), *generate(5, 1.0, GPUS, seed=2)]
    )
    result = simulate_cli(tmp_path / "t.csv")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["refused"] == 1
    assert "1 refused on arrival, more than a 4x24GiB node can hold: huge" in result.stderr


def test_two_nodes_place_two_gpu_jobs_on_one_node() -> None:
    jobs = [TraceJob(f"j{i}", float(i), "u", 10000, 9000, 500.0, 0.4, gpus=2 if i % 3 == 0 else 1) for i in range(30)]
    sim = Simulation(jobs, [24576, 24576], nodes=2, policy="vramq")
    result = sim.run()

    assert {a.node for a in result.attempts} == {0, 1}
    assert all(len(a.gpus) == a.job.gpus for a in result.attempts)


def test_a_big_job_is_not_starved_by_a_stream_of_small_ones() -> None:
    """Small 2-hour jobs keep one 24 GiB GPU busy; a 20 GiB job arrives at t=1000. Backfill may not delay it
    past the moment the small jobs running then finish (their time limits), whatever keeps arriving."""
    small = [TraceJob(f"s{i}", i * 300.0, "many", 5000, 4000, 7200.0, 0.1) for i in range(60)]
    big = TraceJob("big", 1000.0, "one", 20000, 18000, 3600.0, 0.5)
    quick = [TraceJob(f"q{i}", 1500.0 + i * 100, "many", 2000, 1500, 300.0, 0.1) for i in range(3)]
    sim = Simulation([*small, big, *quick], [24576], policy="vramq")
    result = sim.run()

    running_at_arrival = [a for a in result.attempts if a.job.user == "many" and a.start <= 1000.0]
    bound = max(a.start + a.job.duration_s for a in running_at_arrival)
    [attempt] = [a for a in result.attempts if a.job.job_id == "big"]
    assert attempt.start <= bound + 1e-6
    quick_starts = [a.start for a in result.attempts if a.job.job_id.startswith("q")]
    assert max(quick_starts) < attempt.start  # jobs that end in time did start ahead of it (backfill)
    assert all(a.start >= attempt.start for a in result.attempts if a.job.job_id.startswith("s") and a.start > 1000.0)


def test_cli_refuses_a_schedule_it_could_not_write_before_replaying(tmp_path: Path) -> None:
    """A traceback after the whole replay before."""
    write_trace(tmp_path / "t.csv", generate(5, 1.0, GPUS, seed=2))
    result = simulate_cli(tmp_path / "t.csv", "--schedule-out", str(tmp_path / "missing" / "s.csv"))

    assert result.returncode == 2
    assert "missing is not a writable folder" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("seed", "load"), [(60, 1.6), (9, 1.2), (79, 1.2), (300, 1.2), (387, 1.2)])
def test_every_preemption_gives_its_room_to_the_job_it_was_made_for(seed: int, load: float) -> None:
    """Generated traces where, unless the job making room is placed first (`making_room`), others take the
    room back: on seed 60 at 1.6, 4 of 64 preemptions got their room; on seed 9 at 1.2, none of 3. On seed 79
    at 1.2 a job of 2 GPUs has room made on both at once (a room per GPU). On seed 300 at 1.2, a cascade of
    big jobs making room for each other in one instant ran past the simulator's passes, and the last room
    waited 16 ks for the next event. On seed 381 at 1.2, while the stopped jobs finished their epoch, others
    took the room (0 of 11 taken) when the policy planned a stopping job on its whole run, not on its epoch's
    end; no job is stopped there any more (big running jobs are kept while a round of them is queued), and seed
    387 at 1.2 (10 rooms) stands in. A room is given to its job, or that job found room elsewhere sooner while its
    jobs stopped."""
    result = Simulation(generate(300, load, [24576] * 4, seed=seed), [24576] * 4).run()

    assert result.rooms_made > 0
    assert result.rooms_taken + result.rooms_overtaken == result.rooms_made


def test_a_job_moved_off_the_gpu_that_ends_last_resumes_elsewhere_and_brings_the_end_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 19 at 1.2: one GPU's known work would end far after the others'. Jobs there are moved at their
    checkpoints to a GPU that drains sooner (3 moves): makespan over the bound 1.019, where without moves it is
    1.172 (checked), past the issue's 1.15. No stopped job resumes on the GPU it left."""
    trace = generate(300, 1.2, [24576] * 4, seed=19)
    result = Simulation(trace, [24576] * 4).run()
    monkeypatch.setattr("app.scheduler.policy.moves", lambda *args: [])
    unmoved = Simulation(trace, [24576] * 4).run()

    assert result.moves >= 1 and unmoved.moves == 0
    attempts: dict[int, list] = {}
    for attempt in result.attempts:
        attempts.setdefault(attempt.index, []).append(attempt)
    moved = [(a, b) for runs in attempts.values() for a, b in pairwise(runs) if a.outcome == "preempted"]
    assert moved and all(b.gpus != a.gpus for a, b in moved)
    bound = lower_bound(trace, 4, 4 * 24576)
    assert max(end for end, _ in result.finished.values()) <= 1.15 * bound
    assert max(end for end, _ in unmoved.finished.values()) > 1.15 * bound
