"""Fair-share usage: reserved VRAM GB-hours, exponentially decayed with a half-life (pure functions)."""

import math
from collections.abc import Iterable

LN2 = math.log(2)


def decayed_gb_hours(intervals: Iterable[tuple[float, float, float]], now: float, half_life_s: float) -> float:
    """Sum over (start, end, GB reserved) of GB x the decayed length of [start, end], in hours.

    A reservation held at time t counts with weight 2^-((now - t) / half_life): yesterday's GPU-day
    weighs half of today's with the default 24 h half-life.
    """
    total = 0.0
    for start, end, gb in intervals:
        end = min(end, now)
        if end <= start:
            continue
        weight = half_life_s / LN2 * (2 ** (-(now - end) / half_life_s) - 2 ** (-(now - start) / half_life_s))
        total += gb * weight / 3600
    return total


class DecayedUsage:
    """Incrementally maintained usage per user, for a simulated clock that only moves forward."""

    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self.value: dict[str, float] = {}
        self.rate_gb: dict[str, float] = {}  # GB reserved right now
        self.time = 0.0

    def advance(self, now: float) -> None:
        elapsed = now - self.time
        if elapsed <= 0:
            return
        decay = 2 ** (-elapsed / self.half_life_s)
        accrued = self.half_life_s / LN2 * (1 - decay) / 3600
        for user in set(self.value) | set(self.rate_gb):
            self.value[user] = self.value.get(user, 0.0) * decay + self.rate_gb.get(user, 0.0) * accrued
        self.time = now

    def reserve(self, user: str, gb: float) -> None:
        self.rate_gb[user] = self.rate_gb.get(user, 0.0) + gb
