"""Seeded synthetic traces built from the published figures in ../shared/WORKLOADS.md."""

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import replace

from app.simulator.trace import TraceJob

# (cumulative probability, value) knots; values between knots are interpolated (log scale for durations).
MEMORY_MB = [(0.0, 2050), (0.25, 2330), (0.50, 3010), (0.75, 4078), (0.90, 8570), (1.0, 20162)]  # Lucid
UTIL = [(0.0, 0.05), (0.25, 0.21), (0.50, 0.48), (0.75, 0.78), (1.0, 1.0)]  # Lucid solo utilisation
DURATION_S = [
    (0.0, 30),
    (0.10, 61),
    (0.25, 131),
    (0.50, 1186),
    (0.75, 3342),
    (0.90, 12860),
    (0.99, 287333),
    (1.0, 287333),
]  # Microsoft Philly
OVER_REQUEST = 0.98  # Alibaba PAI: 98% of tasks request more than they use
MULTI_GPU = 0.01  # 99% of GPU tasks use one GPU
SWEEP = 0.15  # share of arrivals that are a burst of similar jobs (Venus: heavy bursts)


def _quantile(knots: Sequence[tuple[float, float]], p: float, log: bool = False) -> float:
    i = max(1, bisect.bisect_left([k for k, _ in knots], p))
    (p0, v0), (p1, v1) = knots[i - 1], knots[min(i, len(knots) - 1)]
    share = 0.0 if p1 == p0 else (p - p0) / (p1 - p0)
    if log:
        return math.exp(math.log(v0) + share * (math.log(v1) - math.log(v0)))
    return v0 + share * (v1 - v0)


def generate(
    jobs: int, load: float, gpu_sizes_mb: list[int], nodes: int = 1, users: int = 6, seed: int = 0
) -> list[TraceJob]:
    """`jobs` jobs whose reserved memory-time is `load` times the node's memory-time over the arrival window."""
    rng = random.Random(seed)
    gpu_mb = max(gpu_sizes_mb)
    weights = [1 / (rank + 1) for rank in range(users)]  # a few heavy users, several light ones
    specs: list[TraceJob] = []
    while len(specs) < jobs:
        peak = round(_quantile(MEMORY_MB, rng.random()))
        over = rng.random() < OVER_REQUEST
        request = math.ceil(peak * rng.uniform(1.05, 1.6)) if over else math.floor(peak * rng.uniform(0.75, 0.95))
        request = min(gpu_mb - 256, max(256, request))
        base = TraceJob(
            job_id="",
            submit_s=0.0,
            user=f"user{rng.choices(range(users), weights)[0] + 1}",
            vram_mb=request,
            peak_mb=min(peak, gpu_mb),
            duration_s=round(_quantile(DURATION_S, rng.random(), log=True), 1),
            util=round(_quantile(UTIL, rng.random()), 3),
            gpus=2 if rng.random() < MULTI_GPU else 1,
        )
        burst = rng.randint(4, 16) if rng.random() < SWEEP else 1  # a sweep: one config, several runs
        specs += [replace(base, duration_s=round(base.duration_s * rng.uniform(0.8, 1.2), 1)) for _ in range(burst)]
    specs = specs[:jobs]
    memory_time = sum(j.vram_mb * j.gpus * j.duration_s for j in specs)
    window = memory_time / (load * gpu_mb * len(gpu_sizes_mb) * nodes)
    t, times, i = 0.0, [], 0
    while i < len(specs):  # Poisson arrivals; a sweep arrives within seconds
        t += rng.expovariate(1.0)
        same = 1
        while i + same < len(specs) and specs[i + same].user == specs[i].user and specs[i + same].util == specs[i].util:
            same += 1
        times += [t + k * rng.uniform(0, 0.01) for k in range(same)]
        i += same
    scale = window / max(times)
    return [
        replace(spec, job_id=f"j{n:05d}", submit_s=round(moment * scale, 3))
        for n, (spec, moment) in enumerate(zip(specs, times, strict=True))
    ]
