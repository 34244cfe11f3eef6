"""Counts how often `vramq` meets the issue's targets on many generated traces (held-out seeds).

    .venv/bin/python bench/targets.py [--seeds 1-40] [--jobs 300] [--loads 1.2,1.6,2.5] [--workers 2]

Targets per trace: makespan within 1.15x of the lower bound (1.3x at load 2.5 and above), mean JCT at
most half of `exclusive`'s, no OOM caused by another job, every schedule row feasible.
"""

import argparse
from concurrent.futures import ProcessPoolExecutor

from app.simulator.engine import Simulation
from app.simulator.report import infeasibilities, schedule_rows, summarise
from app.simulator.workload import generate
from app.units import parse_gpu_spec


def check(args: tuple[int, float, int, str]) -> tuple[int, float, float, float, int, int]:
    seed, load, jobs, gpus = args
    sizes = parse_gpu_spec(gpus)
    trace = generate(jobs, load, sizes, seed=seed)
    sim = Simulation(trace, sizes, policy="vramq")
    result = sim.run()
    vramq = summarise(sim, result)
    bad = infeasibilities(trace, schedule_rows(sim, result), sizes, ledger=True)
    sim = Simulation(trace, sizes, policy="exclusive")
    exclusive = summarise(sim, sim.run())
    jct = (vramq["mean_jct_s"] or 0) / (exclusive["mean_jct_s"] or 1)
    return seed, load, vramq["makespan_over_bound"] or 0, jct, vramq["oom_caused_by_others"], len(bad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-40", help="FIRST-LAST")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--gpus", default="4x24GiB")
    parser.add_argument("--loads", default="1.2,1.6,2.5")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    first, last = (int(x) for x in args.seeds.split("-"))
    cases = [(s, float(load), args.jobs, args.gpus) for load in args.loads.split(",") for s in range(first, last + 1)]
    misses = {"makespan": 0, "jct": 0, "oom": 0, "infeasible": 0}
    print(f"{'load':>5} {'seed':>4} {'mk/LB':>6} {'jct/excl':>8}  missed")
    with ProcessPoolExecutor(args.workers) as pool:
        for seed, load, ratio, jct, oom, bad in pool.map(check, cases):
            missed = {
                "makespan": ratio > (1.3 if load >= 2.5 else 1.15),
                "jct": jct > 0.5,
                "oom": oom > 0,
                "infeasible": bad > 0,
            }
            for name, flag in missed.items():
                misses[name] += flag
            print(f"{load:>5} {seed:>4} {ratio:>6.3f} {jct:>8.2f}  {' '.join(n for n, f in missed.items() if f)}")
    print(f"{len(cases)} traces; missed: " + ", ".join(f"{name} {count}" for name, count in misses.items()))


if __name__ == "__main__":
    main()
