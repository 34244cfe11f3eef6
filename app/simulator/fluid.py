"""The fluid lower bound on a trace's makespan: the shortest makespan M of any schedule of the trace's work as a
fluid, a linear program (scipy's HiGHS) that is tighter than the published bound where its terms are close.

Time is cut into intervals at the jobs' submission times, the last one ending at M. Each job's progress in
each interval, x (solo seconds of its work), is a variable; a job's x add up to its run time. Every real
schedule gives such x (its progress, counting work redone after a stop once), and keeps to these rows:

- speed: a job progresses at most 1 solo second per second, and not before its submission;
- compute: a GPU gives at most 1 of compute (processor sharing), so the GPUs' jobs' utilisation x their
  progress adds up to at most the GPUs x the interval's length;
- memory: a job holds its request while it runs (the ledger), at least as long as it progresses, and a GPU
  holds at most its memory;
- crowds: no GPU holds more than m jobs of over 1/(m + 1) of its memory (m = 2, 3, 4), so their progress
  adds up to at most m x the GPUs x the length;
- whole GPUs: no two jobs of a request V over half a GPU share one, and no job of more than the GPU's
  memory - V fits beside them: for each such V, the GPU-time they hold and the compute and memory-time of
  those that fit beside none of them, in the rest, add up to at most the GPUs x the length
  (trace.whole_gpu_bound, per interval).

The published bound treats memory, compute and each job on its own; this one holds them all at once. No
schedule that keeps each GPU's reservations within its memory (a ledger policy's, or exclusive's) ends
before it.
"""

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_array

from app.simulator.trace import TraceJob

# Any subset of the cuts and rows below still gives a bound, a looser one: these keep the program small.
MAX_VARIABLES = 40_000  # jobs x intervals: fewer intervals for a long trace
MAX_INTERVALS = 120
MAX_FLOORS = 16  # the requests over half a GPU whose whole-GPU rows are written


@lru_cache(maxsize=16)  # the same trace is summarised once per policy
def fluid_bound(jobs: tuple[TraceJob, ...], gpu_count: int, gpu_mb: int) -> float:
    """No schedule of `jobs` on `gpu_count` GPUs of `gpu_mb` each ends before this (see the module)."""
    if not jobs:
        return 0.0
    releases = _spread(sorted({job.submit_s for job in jobs}), max(2, min(MAX_INTERVALS, MAX_VARIABLES // len(jobs))))
    lp = _Program(releases, gpu_count)
    for job in jobs:
        lp.add_job(job)
    floors = _spread(sorted({job.vram_mb for job in jobs if 2 * job.vram_mb > gpu_mb}), MAX_FLOORS)
    for k in range(len(releases)):
        on = lp.by_interval[k]
        lp.at_most(k, [(c, job.util * job.gpus) for c, job in on])
        lp.at_most(k, [(c, job.vram_mb * job.gpus / gpu_mb) for c, job in on])
        for most in (2, 3, 4):  # no GPU holds more than `most` jobs of over 1/(most + 1) of its memory
            crowd = [(c, job.gpus / most) for c, job in on if job.vram_mb * (most + 1) > gpu_mb]
            if crowd:
                lp.at_most(k, crowd)
        for floor in floors:
            alone = [(c, float(job.gpus)) for c, job in on if job.vram_mb >= floor]
            if not alone:
                continue
            apart = [(c, job) for c, job in on if gpu_mb - floor < job.vram_mb < floor]
            lp.at_most(k, alone)
            if apart:
                lp.at_most(k, alone + [(c, job.util * job.gpus) for c, job in apart])
                lp.at_most(k, alone + [(c, job.vram_mb * job.gpus / gpu_mb) for c, job in apart])
    return lp.solve([job.duration_s for job in jobs])


def _spread(values: Sequence[float], count: int) -> list[float]:
    """At most `count` of the sorted `values`, evenly spread, the first and last among them."""
    if len(values) <= count:
        return list(values)
    return [values[i] for i in sorted({int(i) for i in np.linspace(0, len(values) - 1, count).round()})]


class _Program:
    """min M (column 0) over M and the progress variables x, one per job and interval it may run in."""

    def __init__(self, starts: Sequence[float], gpu_count: int) -> None:
        self.starts = starts  # interval k is [starts[k], starts[k + 1]); the last, [starts[-1], M]
        self.gpus = gpu_count
        self.upper: list[float] = [np.inf]  # each column's: for x, the interval's length from the job's submission
        self.by_interval: list[list[tuple[int, TraceJob]]] = [[] for _ in starts]
        self.by_job: list[list[int]] = []
        self.rows: list[list[tuple[int, float]]] = []  # sum of coefficient x column <= right-hand side
        self.rhs: list[float] = []

    def add_job(self, job: TraceJob) -> None:
        columns = []
        for k, start in enumerate(self.starts):
            end = self.starts[k + 1] if k + 1 < len(self.starts) else None
            if end is not None and end <= job.submit_s:
                continue
            column = len(self.upper)
            since = max(start, job.submit_s)
            self.upper.append(end - since if end is not None else np.inf)
            if end is None:  # x <= M - since
                self.rows.append([(column, 1.0), (0, -1.0)])
                self.rhs.append(-since)
            self.by_interval[k].append((column, job))
            columns.append(column)
        self.by_job.append(columns)

    def at_most(self, k: int, terms: list[tuple[int, float]]) -> None:
        """The terms add up to at most the GPUs x interval k's length (M - its start for the last)."""
        if k + 1 < len(self.starts):
            self.rows.append(terms)
            self.rhs.append(self.gpus * (self.starts[k + 1] - self.starts[k]))
        else:
            self.rows.append([*terms, (0, -float(self.gpus))])
            self.rhs.append(-self.gpus * self.starts[k])

    def solve(self, run_times: list[float]) -> float:
        width = len(self.upper)

        def matrix(rows: list[list[tuple[int, float]]]) -> coo_array:
            entries = [(r, c, v) for r, row in enumerate(rows) for c, v in row]
            r, c, v = zip(*entries, strict=True) if entries else ((), (), ())
            return coo_array((v, (r, c)), shape=(len(rows), width))

        cost = np.zeros(width)
        cost[0] = 1.0
        result = linprog(
            cost,
            A_ub=matrix(self.rows).tocsr(),
            b_ub=self.rhs,
            A_eq=matrix([[(c, 1.0) for c in columns] for columns in self.by_job]).tocsr(),
            b_eq=run_times,
            bounds=np.column_stack([np.zeros(width), self.upper]),
            method="highs",
        )
        if result.status != 0:
            raise RuntimeError(f"the fluid bound's linear program failed: {result.message}")
        return float(result.x[0])
