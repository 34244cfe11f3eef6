"""The trace format of ../shared/WORKLOADS.md, the physical lower bound on its makespan, and a tighter one
for jobs too big to share a GPU."""

import csv
import math
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("job_id", "submit_s", "user", "vram_mb", "peak_mb", "duration_s", "util")


class TraceError(ValueError):
    """Raised when a trace file does not follow the format."""


@dataclass(frozen=True)
class TraceJob:
    job_id: str
    submit_s: float
    user: str
    vram_mb: int  # what it requests per GPU
    peak_mb: int  # what it really uses at its peak
    duration_s: float  # solo run time on an idle GPU
    util: float  # solo compute utilisation, 0 < util <= 1
    gpus: int = 1


def load_trace(path: Path) -> list[TraceJob]:
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}: missing columns {', '.join(missing)}")
        jobs = []
        for line, row in enumerate(reader, start=2):
            empty = [c for c in COLUMNS if not (row.get(c) or "").strip()]
            if empty:
                raise TraceError(f"{path}:{line}: no value for {', '.join(empty)}")
            try:
                job = TraceJob(
                    job_id=row["job_id"],
                    submit_s=_number(row["submit_s"]),
                    user=row["user"],
                    vram_mb=int(_number(row["vram_mb"])),
                    peak_mb=int(_number(row["peak_mb"])),
                    duration_s=_number(row["duration_s"]),
                    util=_number(row["util"]),
                    gpus=int(row.get("gpus") or 1),
                )
            except ValueError as exc:
                raise TraceError(f"{path}:{line}: {exc}") from exc
            if job.submit_s < 0 or job.vram_mb <= 0 or job.peak_mb < 0 or job.duration_s <= 0 or job.gpus < 1:
                raise TraceError(f"{path}:{line}: sizes and durations must be positive")
            if not 0 < job.util <= 1:
                raise TraceError(f"{path}:{line}: util must be in (0, 1]")
            jobs.append(job)
    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        raise TraceError(f"{path}: job_id values must be unique")
    return jobs


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text.strip()!r} is not a finite number")
    return value


def write_trace(path: Path, jobs: list[TraceJob]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*COLUMNS, "gpus"])
        for j in jobs:
            writer.writerow(
                [
                    j.job_id,
                    f"{j.submit_s:.3f}",
                    j.user,
                    j.vram_mb,
                    j.peak_mb,
                    f"{j.duration_s:.3f}",
                    f"{j.util:.4f}",
                    j.gpus,
                ]
            )


def lower_bound(jobs: list[TraceJob], gpu_count: int, total_mb: int) -> float:
    """No schedule finishes before this (WORKLOADS.md)."""
    return max(bound_terms(jobs, gpu_count, total_mb).values(), default=0.0)


def bound_terms(jobs: list[TraceJob], gpu_count: int, total_mb: int) -> dict[str, float]:
    """The three terms of the lower bound: the longest job (from its submission), and the memory-time and
    compute-time areas released after each submission time; the largest says what limits the trace."""
    if not jobs:
        return {}
    memory = compute = area_memory = area_compute = 0.0
    for job in sorted(jobs, key=lambda j: j.submit_s, reverse=True):
        area_memory += job.gpus * job.vram_mb * job.duration_s / total_mb
        area_compute += job.gpus * job.util * job.duration_s / gpu_count
        memory, compute = max(memory, job.submit_s + area_memory), max(compute, job.submit_s + area_compute)
    longest = max(job.submit_s + job.duration_s for job in jobs)
    return {"longest job": longest, "memory": memory, "compute": compute}


def whole_gpu_bound(jobs: list[TraceJob], gpu_count: int, gpu_mb: int) -> float:
    """A lower bound on the makespan that is tighter than `lower_bound` where jobs of more than half a GPU's
    memory (`gpu_mb`, each GPU's) set it; 0 without such jobs. No two of them share a GPU, so at any moment a
    GPU holds at most one: for a request V over half a GPU, the jobs of V or more, released at t or later, need
    their run times in GPU-seconds of their own (times their GPUs). A job too big to fit beside any of them
    (over gpu_mb - V, at most half a GPU) needs its compute and its memory-time in the other GPU-seconds,
    which give 1 of compute and gpu_mb of memory each. So no schedule ends before

        max over t, V of  t + (sum of their run times + max(those others' compute, memory-time / gpu_mb)) / G

    The published bound counts a 22 GB job on a 24 GB GPU as 0.9 of it, and a sweep of them can set the
    makespan well above it (bench/targets.py reports both)."""
    floors = sorted({job.vram_mb for job in jobs if 2 * job.vram_mb > gpu_mb})
    alone = dict.fromkeys(floors, 0.0)  # per floor V, over the jobs released so far (latest first)
    compute = dict.fromkeys(floors, 0.0)
    memory = dict.fromkeys(floors, 0.0)
    best = 0.0
    for job in sorted(jobs, key=lambda j: j.submit_s, reverse=True):
        for floor in floors:
            if job.vram_mb >= floor:
                alone[floor] += job.duration_s * job.gpus
            elif gpu_mb - floor < job.vram_mb <= gpu_mb / 2:
                compute[floor] += job.util * job.duration_s * job.gpus
                memory[floor] += job.vram_mb * job.duration_s * job.gpus / gpu_mb
        for floor in floors:
            best = max(best, job.submit_s + (alone[floor] + max(compute[floor], memory[floor])) / gpu_count)
    return best
