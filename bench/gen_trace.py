"""Generate a seeded trace from the published workload figures (../shared/WORKLOADS.md).

.venv/bin/python bench/gen_trace.py --jobs 300 --load 1.2 --gpus 4x24GiB --seed 1 -o trace.csv
"""

import argparse
from pathlib import Path

from app.simulator.trace import write_trace
from app.simulator.workload import generate
from app.units import parse_gpu_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--load", type=float, default=1.2, help="reserved memory-time / node memory-time")
    parser.add_argument("--gpus", default="4x24GiB", help="GPUs of each node")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    jobs = generate(args.jobs, args.load, parse_gpu_spec(args.gpus), args.nodes, args.users, args.seed)
    write_trace(args.output, jobs)
    print(f"{len(jobs)} jobs over {max(j.submit_s for j in jobs):.0f} s -> {args.output}")


if __name__ == "__main__":
    main()
