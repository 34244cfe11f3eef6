"""Counts how often `vramq` meets the issue's targets on many generated traces (held-out seeds).

    .venv/bin/python bench/targets.py [--seeds 1-40] [--jobs 300] [--loads 1.2,1.6,2.5] [--workers 2] [--explain]
        [--util-unknown] [--limit-factor F] [--restart-cost S] [--set NAME=VALUE ...]

Targets per trace: makespan within 1.15x of the lower bound (1.3x at load 2.5 and above), mean JCT at
most half of `exclusive`'s, no OOM caused by another job, every schedule row feasible.
With --explain, each makespan miss names the term of the lower bound that sets it (the longest job, the
memory area or the compute area) and the jobs that ended past the limit: "late" if it started after the
last moment from which running alone would have met it, else "slowed" (it shared compute), or "stopped"
when it was also preempted or moved, and queued again; its wait is split
by what the policy said it lacked: memory, compute (the GPUs with room were at the cap), held (for the
reservation of another job), critical (waiting for a GPU rather than sharing one), slots, quota. A miss is
"sealed at arrival" when a late job could not have met the limit from its submission on: on no GPU, with
the attempts running there then (report.soonest_end), however the policy had placed it; or when the late jobs
of more than half a GPU's memory, no two of which share a GPU, could not all have met it once the last of them
had arrived, one after another on each GPU as the attempts running then left room (report.big_jobs_end).
By default the policy knows each queued job's utilisation and run time exactly (a perfect history);
--util-unknown starts with no history: a job is at utilisation 0.5 until a job of its fingerprint (user,
request, GPUs) has started and been measured; --limit-factor F gives it time limits F times the true run
time instead, which it knows to be limits (upper bounds), as the live scheduler knows a job's time_limit_s.
--restart-cost S charges each preempted or moved job S seconds of its solo work when it resumes (start-up and
loading its checkpoint; by default a restart is free): how much the preemptions and moves gain once restarts cost.
Each trace also shows mk/TB, the makespan over a tighter bound that is just as valid (the summary's
tight_bound_s: the largest of the published one, trace.whole_gpu_bound and fluid.fluid_bound): jobs of more
than half a GPU's memory never share one, so a sweep of them can need far more than the published bound;
and no schedule meets memory, compute and each job's run time all at once as the published bound meets
each alone. A miss is "beyond any schedule" where that bound itself is past the limit, and the last line
counts the misses against it.
It also counts preemptions (the jobs of one GPU stopped for one job), how many gave their room at once to
the job they were made for and how many were overtaken (a stopped job runs on to the end of its epoch, and
meanwhile the job found room elsewhere sooner), and moves (a job stopped to resume on a GPU that drains
sooner).
--set changes a setting of the policy (a PolicyConfig field: compute_cap, critical_share, fair_share,
backfill, preempt; a number, true, false or none), to see what each target gains and loses: e.g.
--set critical_share=0.75.
"""

import argparse
import math
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields, replace

from app.scheduler.state import PolicyConfig
from app.simulator.engine import CONFIGS, Estimates, Result, Simulation
from app.simulator.report import (
    big_jobs_end,
    infeasibilities,
    schedule_rows,
    soonest_end,
    summarise,
    too_big_to_pair,
)
from app.simulator.trace import bound_terms
from app.simulator.workload import generate
from app.units import parse_gpu_spec


def limit(load: float) -> float:
    return 1.3 if load >= 2.5 else 1.15


def culprits(sim: Simulation, result: Result, deadline: float) -> tuple[str, str, str]:
    """The jobs that ended after `deadline`, latest first (size, wait, why), the kind of the last: slowed, or
    started late for want of what it lacked longest (memory, compute, held...), and what sealed the miss
    once the late jobs had arrived, if anything did: a late job alone, or the late jobs over half a GPU
    together (report.big_jobs_end)."""
    trace = dict(sim.trace)
    stopped = Counter(a.index for a in result.attempts if a.outcome == "preempted")
    rows = []
    sealing = []
    for index, (end, _) in result.finished.items():
        if end > deadline:
            job, start = trace[index], result.first_start[index]
            late = start > deadline - job.duration_s
            lacked = sorted(result.waited[index].items(), key=lambda item: -item[1])
            if late:
                why, kind = "late", f"late for {lacked[0][0]}" if lacked else "late"
            else:
                why, kind = f"slowed x{(end - start) / job.duration_s:.2f}", "slowed"
                if stopped[index]:  # its waits once queued again count in `lacked` too
                    why, kind = f"{why}, stopped {stopped[index]}x (preempted or moved)", "stopped"
            lacking = ", ".join(f"{what} {seconds:.0f}" for what, seconds in lacked if seconds >= 1)
            text = f"{job.job_id} {job.vram_mb} MB util {job.util:g} {job.duration_s:.0f} s, waited "
            text += f"{start - job.submit_s:.0f} s" + (f" ({lacking})" if lacking else "")
            rows.append((end, f"{text}: {why}", kind))
            soonest = soonest_end(sim, result, index)
            if soonest is not None and soonest > deadline:
                sealing.append(f"{job.job_id} could end no sooner than {soonest / deadline:.2f}x the limit")
    sealed = "by a late job alone" if sealing else ""
    late_big = [
        trace[i] for i, (end, _) in result.finished.items() if end > deadline and too_big_to_pair(sim, trace[i])
    ]
    arrived = max((job.submit_s for job in late_big), default=None)
    if arrived is not None and (bound := big_jobs_end(sim, result, arrived)) > deadline:
        sealing.append(
            f"the jobs over half a GPU not started at {arrived:.0f} s could end no sooner than "
            f"{bound / deadline:.2f}x the limit"
        )
        sealed = sealed or "by the big jobs together"
    rows.sort(reverse=True)
    text = f"{len(rows)} past the limit; " + "; ".join(text for _, text, _ in rows[:3])
    if sealing:
        text += "; sealed at arrival: " + ", ".join(sealing[:3])
    return text, rows[0][2], sealed


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number above 0")
    return value


def setting(text: str) -> tuple[str, float | bool | None]:
    """NAME=VALUE of --set, checked against PolicyConfig."""
    name, _, value = text.partition("=")
    names = [f.name for f in fields(PolicyConfig) if f.name != "quotas"]
    if name not in names:
        raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(names)}")
    words: dict[str, bool | None] = {"true": True, "false": False, "none": None}
    if value.lower() in words:
        return name, words[value.lower()]
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number, true, false or none") from None


def check(
    args: tuple[int, float, int, str, bool, Estimates, PolicyConfig, float],
) -> tuple[int, float, float, float, float, int, int, tuple[str, str, str, str], tuple[int, int, int, int]]:
    seed, load, jobs, gpus, explain, estimates, config, restart_s = args
    sizes = parse_gpu_spec(gpus)
    trace = generate(jobs, load, sizes, seed=seed)
    sim = Simulation(trace, sizes, policy="vramq", estimates=estimates, config=config, restart_s=restart_s)
    result = sim.run()
    vramq = summarise(sim, result)
    ratio = vramq["makespan_over_bound"] or 0
    tight_ratio = vramq["makespan_s"] / (vramq["tight_bound_s"] or vramq["lower_bound_s"] or 1)
    why = ("", "", "", "")
    if explain and ratio > limit(load):
        terms = bound_terms(trace, len(sizes), sum(sizes))
        term = max(terms, key=lambda name: terms[name])
        text, kind, sealed = culprits(sim, result, limit(load) * vramq["lower_bound_s"])
        why = (f"bound set by {term}; {text}", kind, term, sealed)
    bad = infeasibilities(trace, schedule_rows(sim, result), sizes, ledger=True)
    sim = Simulation(trace, sizes, policy="exclusive")
    exclusive = summarise(sim, sim.run())
    jct = (vramq["mean_jct_s"] or 0) / (exclusive["mean_jct_s"] or 1)
    rooms = (result.rooms_made, result.rooms_taken, result.rooms_overtaken, result.moves)
    return seed, load, ratio, tight_ratio, jct, vramq["oom_caused_by_others"], len(bad), why, rooms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-40", help="FIRST-LAST")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--gpus", default="4x24GiB")
    parser.add_argument("--loads", default="1.2,1.6,2.5")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--explain", action="store_true", help="name the jobs behind each makespan miss")
    parser.add_argument("--util-unknown", action="store_true", help="no utilisation history: 0.5 until measured")
    parser.add_argument("--limit-factor", type=positive, help="time limits this many times the run time")
    parser.add_argument("--restart-cost", type=float, default=0.0, help="seconds a resumed job redoes")
    parser.add_argument("--set", type=setting, action="append", default=[], help="NAME=VALUE: a policy setting")
    args = parser.parse_args()
    if not 0 <= args.restart_cost < math.inf:
        parser.error(f"--restart-cost {args.restart_cost:g}: give a number of seconds, 0 or more")
    first, last = (int(x) for x in args.seeds.split("-"))
    estimates = Estimates(util_known=not args.util_unknown, limit_factor=args.limit_factor)
    config = replace(CONFIGS["vramq"], **dict(args.set))
    if args.set:
        print(f"policy settings: {config}")
    cases = [
        (s, float(load), args.jobs, args.gpus, args.explain, estimates, config, args.restart_cost)
        for load in args.loads.split(",")
        for s in range(first, last + 1)
    ]
    kinds: Counter[str] = Counter()
    terms: Counter[str] = Counter()
    sealed: Counter[str] = Counter()
    misses = {"makespan": 0, "jct": 0, "oom": 0, "infeasible": 0}
    made = taken = overtaken = moved = 0
    beyond = tight_misses = 0
    print(f"{'load':>5} {'seed':>4} {'mk/LB':>6} {'jct/excl':>8} {'mk/TB':>6}  missed")
    with ProcessPoolExecutor(args.workers) as pool:
        for seed, load, ratio, tight_ratio, jct, oom, bad, why, rooms in pool.map(check, cases):
            made, taken, overtaken, moved = (a + b for a, b in zip((made, taken, overtaken, moved), rooms, strict=True))
            missed = {
                "makespan": ratio > limit(load),
                "jct": jct > 0.5,
                "oom": oom > 0,
                "infeasible": bad > 0,
            }
            for name, flag in missed.items():
                misses[name] += flag
            tight_misses += tight_ratio > limit(load)
            # The tighter bound over the published one: past the limit, no schedule meets the target.
            out_of_reach = missed["makespan"] and ratio / tight_ratio > limit(load)
            beyond += out_of_reach
            flags = [n for n, f in missed.items() if f] + (["(beyond any schedule)"] if out_of_reach else [])
            print(f"{load:>5} {seed:>4} {ratio:>6.3f} {jct:>8.2f} {tight_ratio:>6.3f}  {' '.join(flags)}")
            if why[0]:
                print(f"{'':>11} {why[0]}")
                kinds[why[1]] += 1
                terms[why[2]] += 1
                sealed[why[3]] += 1
    print(f"{len(cases)} traces; missed: " + ", ".join(f"{name} {count}" for name, count in misses.items()))
    print(
        f"preemptions: {made}, of which {taken} gave their room at once to the job they were made for, and {overtaken}"
        " were overtaken (that job found room elsewhere sooner, while they finished their epoch)"
    )
    print(f"moves: {moved} (a job stopped to resume on a GPU that drains sooner)")
    print(
        f"makespan misses beyond any schedule (the tighter bound itself past the limit): {beyond}; "
        f"makespan misses against the tighter bound: {tight_misses}"
    )
    if kinds:
        print("makespan misses by their last job: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
        print("makespan misses by the bound's term: " + ", ".join(f"{k} {n}" for k, n in terms.most_common()))
        count = sum(n for k, n in sealed.items() if k)
        kinds_sealed = ", ".join(f"{k} {n}" for k, n in sealed.most_common() if k)
        print(
            f"makespan misses sealed once the late jobs had arrived (no later decision could meet them): {count}"
            + (f" ({kinds_sealed})" if kinds_sealed else "")
        )


if __name__ == "__main__":
    main()
