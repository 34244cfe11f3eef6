"""Time one scheduling decision: 1,000 pending jobs from 8 users on 16 GPUs (4 nodes x 4), 40 running;
then the forecast of estimated starts over the same state.

.venv/bin/python bench/decision.py [--pending 1000] [--repeat 50]
"""

import argparse
import math
import random
import statistics
import time

from app.scheduler.forecast import BUDGET_S, forecast
from app.scheduler.policy import schedule
from app.scheduler.state import GpuState, NodeState, PendingJob, PolicyConfig, RunningJob, UserState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    rng = random.Random(0)
    running = [
        RunningJob(f"n{i % 4}", (i % 4,), rng.randint(2000, 6000), rng.uniform(0.1, 0.6), 1000.0 + i * 50)
        for i in range(40)
    ]
    nodes = [
        NodeState(f"n{n}", 8, tuple(GpuState(g, rng.randint(0, 6000), rng.uniform(0.5, 1.2)) for g in range(4)))
        for n in range(4)
    ]
    pending = [
        PendingJob(
            i,
            rng.choice([2330, 3010, 4078, 8570, 12000]),
            1,
            rng.randint(0, 2),
            float(i),
            f"user{i % 8}",
            rng.uniform(0.1, 0.9),
            rng.choice([None, 600.0, 3600.0]),
        )
        for i in range(args.pending)
    ]
    users = {f"user{u}": UserState(usage=rng.uniform(0, 100)) for u in range(8)}
    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        decision = schedule(pending, nodes, 0.0, running=running, users=users)
        timings.append((time.perf_counter() - started) * 1000)
    print(
        f"{args.pending} pending, 16 GPUs: median {statistics.median(timings):.2f} ms, "
        f"p95 {sorted(timings)[int(0.95 * len(timings)) - 1]:.2f} ms per decision "
        f"({len(decision.placements)} placed, {len(decision.waiting)} with a reason)"
    )
    for budget in (BUDGET_S, math.inf):  # the scheduler's forecast of estimated starts, and without its budget
        started = time.perf_counter()
        dated = forecast(pending, nodes, 0.0, config=PolicyConfig(), running=running, users=users, budget_s=budget)
        print(
            f"forecast (budget {budget:g} s): {(time.perf_counter() - started) * 1000:.0f} ms, "
            f"{len(dated)} of {args.pending} dated, up to t={max(dated.values(), default=0):.0f} s"
        )


if __name__ == "__main__":
    main()
