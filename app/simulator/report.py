"""Figures of a simulated schedule, the schedule rows, and checks that the schedule was feasible."""

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from app.scheduler.cluster import finish_time
from app.simulator.engine import CONFIGS, Attempt, Result, Simulation
from app.simulator.fluid import fluid_bound
from app.simulator.trace import TraceJob, lower_bound, whole_gpu_bound


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))]


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when every value is equal, 1/n when one user gets everything."""
    if not values or not any(values):
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def summarise(sim: Simulation, result: Result) -> dict[str, Any]:
    trace = [job for _, job in sorted(sim.trace)]
    gpu_count = len(sim.sizes) * sim.nodes
    total_mb = sum(sim.sizes) * sim.nodes
    ends = [end for end, _ in result.finished.values()]
    makespan = max(ends, default=0.0)
    refused = set(result.refused)  # they never run: neither the schedule nor the bound has them
    kept = [job for index, job in enumerate(trace) if index not in refused]
    bound = lower_bound(kept, gpu_count, total_mb)
    # Where the GPUs are alike, the tightest bound known: for jobs too big to share a GPU (trace.whole_gpu_bound),
    # and for memory, compute and run times held at once (fluid.fluid_bound).
    tight = None
    if len(set(sim.sizes)) == 1:
        size = sim.sizes[0]
        tight = max(bound, whole_gpu_bound(kept, gpu_count, size), fluid_bound(tuple(kept), gpu_count, size))
    jct: list[float] = []
    wait: list[float] = []
    per_user: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"jct": [], "wait": [], "slowdown": []})
    jobs_of: dict[str, int] = defaultdict(int)
    for index in result.refused:
        per_user[trace[index].user]  # a user all of whose jobs were refused is still listed
        jobs_of[trace[index].user] += 1
    for index, (end, succeeded) in result.finished.items():
        job = trace[index]
        user = per_user[job.user]
        jobs_of[job.user] += 1
        if not succeeded:
            continue
        started = result.first_start[index]
        jct.append(end - job.submit_s)
        wait.append(started - job.submit_s)
        user["jct"].append(end - job.submit_s)
        user["wait"].append(started - job.submit_s)
        user["slowdown"].append((end - job.submit_s) / job.duration_s)
    memory_time = sum(a.request_mb * len(a.gpus) * ((a.end or makespan) - a.start) for a in result.attempts)
    users = {
        name: {
            "jobs": jobs_of[name],
            "mean_jct_s": round(statistics.fmean(u["jct"]), 1) if u["jct"] else None,
            "mean_wait_s": round(statistics.fmean(u["wait"]), 1) if u["wait"] else None,
            "mean_slowdown": round(statistics.fmean(u["slowdown"]), 4) if u["slowdown"] else None,
        }
        for name, u in sorted(per_user.items())
    }
    slowdowns = [statistics.fmean(u["slowdown"]) for u in per_user.values() if u["slowdown"]]
    return {
        "policy": sim.policy,
        "jobs": len(trace),
        "gpus": gpu_count,
        "makespan_s": round(makespan, 1),
        "lower_bound_s": round(bound, 1),
        "makespan_over_bound": round(makespan / bound, 4) if bound else None,
        "tight_bound_s": round(tight, 1) if tight is not None else None,
        "mean_jct_s": round(statistics.fmean(jct), 1) if jct else None,
        "p95_jct_s": round(percentile(jct, 0.95), 1),
        "mean_wait_s": round(statistics.fmean(wait), 1) if wait else None,
        "p95_wait_s": round(percentile(wait, 0.95), 1),
        "mem_utilization": round(memory_time / (total_mb * makespan), 4) if makespan else 0.0,
        "oom_failures": sum(1 for a in result.attempts if a.outcome in ("oom", "oom_other")),
        "oom_caused_by_others": sum(1 for a in result.attempts if a.outcome == "oom_other"),
        "completed": sum(1 for _, ok in result.finished.values() if ok),
        "failed": sum(1 for _, ok in result.finished.values() if not ok),
        "refused": len(refused),
        "decisions": result.decisions,
        "jain_fairness": round(jain(slowdowns), 4),
        "users": users,
    }


def schedule_rows(sim: Simulation, result: Result) -> list[dict[str, Any]]:
    return [
        {
            "job_id": a.job.job_id,
            "attempt": a.number,
            "node": f"node-{a.node}",
            "gpu_indices": ";".join(str(g) for g in a.gpus),
            "start_s": round(a.start, 3),
            "end_s": round(a.end if a.end is not None else a.start, 3),
            "vram_mb": a.request_mb,
            "outcome": a.outcome,
        }
        for a in sorted(result.attempts, key=lambda a: (a.start, a.job.job_id, a.number))
    ]


def write_schedule(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = ["job_id", "attempt", "node", "gpu_indices", "start_s", "end_s", "vram_mb", "outcome"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def infeasibilities(trace: list[TraceJob], rows: list[dict[str, Any]], sizes: list[int], ledger: bool) -> list[str]:
    """Each way the schedule breaks physics or the ledger: starts before submission, and (for a ledger
    policy) reservations on a GPU above its memory at any moment."""
    submitted = {job.job_id: job.submit_s for job in trace}
    problems = [
        f"{r['job_id']} starts at {r['start_s']} before its submission"
        for r in rows
        if r["start_s"] < submitted[r["job_id"]] - 1e-3
    ]
    if ledger:
        events: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
        for r in rows:
            for g in str(r["gpu_indices"]).split(";"):
                events[r["node"], int(g)] += [(r["start_s"], r["vram_mb"]), (r["end_s"], -r["vram_mb"])]
        for (node, gpu), changes in events.items():
            held = 0
            for moment, delta in sorted(changes, key=lambda c: (c[0], c[1])):  # releases first at a tie
                held += delta
                if held > sizes[gpu]:
                    problems.append(f"{node} GPU {gpu} holds {held} MB at {moment} (it has {sizes[gpu]} MB)")
    return problems


def soonest_end(sim: Simulation, result: Result, index: int) -> float | None:
    """The soonest the job (by its trace index) could have ended, given the GPUs as they stood when it was
    submitted: on its best GPU, sharing compute only with the attempts already running there (none preempted,
    nothing added), started then or when one of them ends and leaves it room. No decision taken from its
    arrival on could have ended it sooner. None: a multi-GPU job, not judged."""
    job = dict(sim.trace)[index]
    if job.gpus > 1:
        return None
    on = attempts_by_gpu(result)
    best = math.inf
    for (_, g), running in running_at(sim, on, job.submit_s).items():
        # What each still had to do: the work it did from then to its end (a success, or an OOM at its cap).
        items = [(a.done - work_done(a, job.submit_s, on), a) for a in running if a.index != index]
        items.sort(key=lambda item: item[0])
        moments = [(job.submit_s, 0.0)]
        for left, _ in items:
            moments.append((finish_time(job.submit_s, [(min(x, left), a.job.util) for x, a in items], 0.0), left))
        for moment, progress in moments:
            rest = [(left - progress, a) for left, a in items if left > progress]
            if sim.sizes[g] - sum(a.request_mb for _, a in rest) >= job.vram_mb:
                work = [(min(left, job.duration_s), a.job.util) for left, a in rest]
                best = min(best, finish_time(moment, [*work, (job.duration_s, job.util)], 0.0))
    return best


def big_jobs_end(sim: Simulation, result: Result, moment: float) -> float:
    """The soonest the jobs of more than half a GPU's memory that had not started by `moment` could all have
    ended. No two of them fit on one GPU, so each GPU runs them one after another, after the attempts
    running there at `moment` that leave none of them room have ended (at full speed at best): however they
    are split over the GPUs, the last ends no sooner than the best split of their run times over the GPUs
    as they free up (the GPUs a split leaves out take none). No decision from `moment` on could have ended
    them sooner."""
    big = [
        job
        for index, job in sim.trace
        if too_big_to_pair(sim, job) and result.first_start.get(index, math.inf) > moment
    ]
    if not big:
        return moment
    smallest = min(job.vram_mb for job in big)
    on = attempts_by_gpu(result)
    free_at = []
    for (_, g), running in running_at(sim, on, moment).items():
        # Each ends no sooner than its work left at full speed; the GPU has room once those still running hold
        # no more than its memory less the smallest big job's.
        ends = sorted((moment + a.done - work_done(a, moment, on), a.request_mb) for a in running)
        held, at = sum(mb for _, mb in ends), moment
        for end, mb in ends:
            if held <= sim.sizes[g] - smallest:
                break
            held, at = held - mb, end
        free_at.append(at)
    work = sum(job.duration_s * job.gpus for job in big)
    free_at.sort()
    split = min((sum(free_at[:k]) + work) / k for k in range(1, len(free_at) + 1))
    return max(split, free_at[0] + max(job.duration_s for job in big))


def too_big_to_pair(sim: Simulation, job: TraceJob) -> bool:
    """Whether the job needs more than half the largest GPU: no two such jobs ever share one."""
    return job.vram_mb > max(sim.sizes) / 2


def attempts_by_gpu(result: Result) -> defaultdict[tuple[int, int], list[Attempt]]:
    """Each GPU's attempts, by (node, GPU index)."""
    on: defaultdict[tuple[int, int], list[Attempt]] = defaultdict(list)
    for a in result.attempts:
        for g in a.gpus:
            on[a.node, g].append(a)
    return on


def running_at(
    sim: Simulation, on: dict[tuple[int, int], list[Attempt]], moment: float
) -> dict[tuple[int, int], list[Attempt]]:
    """Every GPU of the simulation, with the attempts running on it at `moment`."""
    return {
        (n, g): [a for a in on.get((n, g), []) if a.start <= moment < (a.end or math.inf)]
        for n in range(sim.nodes)
        for g in range(len(sim.sizes))
    }


def work_done(attempt: Attempt, moment: float, on: dict[tuple[int, int], list[Attempt]]) -> float:
    """Solo seconds of work the attempt had done by `moment` (`on`: the attempts of each GPU), counting what
    it resumed from: it ran at 1/load of its busiest GPU (processor sharing)."""
    neighbours = [b for g in attempt.gpus for b in on[attempt.node, g]]
    end = min(moment, attempt.end or math.inf)
    times = {attempt.start, end} | {
        t for b in neighbours for t in (b.start, b.end) if t is not None and attempt.start < t < end
    }
    ordered = sorted(times)
    done = attempt.resumed
    for t0, t1 in zip(ordered, ordered[1:], strict=False):
        mid = (t0 + t1) / 2
        load = max(
            sum(b.job.util for b in on[attempt.node, g] if b.start <= mid < (b.end or math.inf)) for g in attempt.gpus
        )
        done += (t1 - t0) / max(1.0, load)
    return min(done, attempt.job.duration_s)


def uses_ledger(policy: str) -> bool:
    return policy in CONFIGS
