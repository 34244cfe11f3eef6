"""Runs the four policies on generated traces at several loads and prints one table.

    .venv/bin/python bench/policies.py [--jobs 300] [--seeds 1,2,3] [--loads 1.2,1.6,2.5]

makespan/LB is the makespan over the physical lower bound of WORKLOADS.md; JCT and wait are means in
seconds; jct/excl is the mean JCT over the exclusive baseline's in the same trace; OOM counts attempts
killed for memory (in brackets: caused by another job).
"""

import argparse

from app.simulator.engine import POLICIES, Simulation
from app.simulator.report import infeasibilities, schedule_rows, summarise, uses_ledger
from app.simulator.workload import generate
from app.units import parse_gpu_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--gpus", default="4x24GiB")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--loads", default="1.2,1.6,2.5")
    args = parser.parse_args()
    sizes = parse_gpu_spec(args.gpus)
    print(
        f"{'load':>5} {'seed':>4} {'policy':<12} {'mk/LB':>6} {'mean JCT':>9} {'p95 JCT':>9} {'wait':>9} "
        f"{'jct/excl':>8} {'mem util':>8} {'OOM':>9} {'done':>5} {'jain':>5} {'feasible':>8}"
    )
    for load in (float(x) for x in args.loads.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            trace = generate(args.jobs, load, sizes, seed=seed)
            figures = {}
            for policy in POLICIES:
                sim = Simulation(trace, sizes, policy=policy)
                result = sim.run()
                figures[policy] = summarise(sim, result)
                bad = infeasibilities(trace, schedule_rows(sim, result), sizes, uses_ledger(policy))
                figures[policy]["feasible"] = "yes" if not bad else f"NO ({len(bad)})"
            exclusive = figures["exclusive"]["mean_jct_s"] or 1
            for policy, f in figures.items():
                print(
                    f"{load:>5} {seed:>4} {policy:<12} {f['makespan_over_bound']:>6.3f} {f['mean_jct_s'] or 0:>9.0f} "
                    f"{f['p95_jct_s']:>9.0f} {f['mean_wait_s'] or 0:>9.0f} {(f['mean_jct_s'] or 0) / exclusive:>8.2f} "
                    f"{f['mem_utilization']:>8.3f} {f['oom_failures']:>4} ({f['oom_caused_by_others']:>3}) "
                    f"{f['completed']:>5} {f['jain_fairness']:>5.2f} {f['feasible']:>8}"
                )


if __name__ == "__main__":
    main()
