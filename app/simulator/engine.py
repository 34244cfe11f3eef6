"""Discrete-event replay of a trace on simulated GPUs (contention and memory models of WORKLOADS.md).

Between events every rate is constant: a job on GPUs whose summed utilisation is U > 1 progresses at
1/U (processor sharing); its memory grows linearly to its peak over the first 10% of its work.
Policies `vramq` and `fifo-ledger` reserve requests in a ledger and cap each job at its request (a job
whose peak is larger fails `oom` when it reaches its cap and retries with 1.5x, and the queued jobs of
its fingerprint ask as much); `exclusive` gives each job whole GPUs; `free-memory` starts a job when
measured free memory covers its request, without a ledger or caps, so jobs that grow into each other are
killed by OOM. Under every policy a job that no node could hold even idle (more GPUs than a node has, or a
request larger than its GPUs) is refused when it arrives, as the live intake refuses it
(VramUnsatisfiable): it waits for nothing and blocks no queue.

What the ledger policies are told about a queued job is set by `Estimates`: by default the trace's own
utilisation and run time, as if each job's history predicted it exactly. Running jobs' loads and ends
are always exact, as measurement and training progress give them live. A trace has no commands, so the
jobs of one user with the same request and GPU count stand for one fingerprint (a generated sweep's).
"""

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from app.scheduler.fairshare import DecayedUsage
from app.scheduler.policy import schedule
from app.scheduler.state import (
    DEFAULT_UTIL,
    GpuState,
    NodeState,
    PendingJob,
    PolicyConfig,
    Preemption,
    RunningJob,
    UserState,
)
from app.services.sizing import grown_request, per_gpu_room
from app.simulator.trace import TraceJob

POLICIES = ("vramq", "fifo-ledger", "exclusive", "free-memory")
CONFIGS = {
    "vramq": PolicyConfig(),
    "fifo-ledger": PolicyConfig(fair_share=False, backfill=False, compute_cap=None, critical_share=None),
}
GROWTH_FRACTION = 0.10  # memory reaches its peak after this share of the work
# A job checkpoints at the end of each epoch of this much work (a few minutes), counted from the checkpoint
# it started from; it is preemptible once it has an epoch of its own. Preempted, it runs on to the end of the
# epoch under way and stops there, keeping all its work, as autolog does live.
EPOCH_S = 300.0
EPS = 1e-7


@dataclass(frozen=True)
class Estimates:
    """What the policy knows of a queued job before it runs (live: from history and time limits)."""

    # False: no history before the trace. A job is at DEFAULT_UTIL until a job of its fingerprint has
    # started: then its load is measured, as the live scheduler measures a sweep's first jobs.
    util_known: bool = True
    # None: its run time is known as a perfect history would tell it. A number: it has only a time
    # limit, this many times its true run time (an upper bound when >= 1).
    limit_factor: float | None = None


@dataclass
class Attempt:
    job: TraceJob
    index: int  # the job's position in the trace: its id for the policy
    number: int
    request_mb: int
    node: int
    gpus: tuple[int, ...]
    start: float
    done: float = 0.0  # solo-seconds of work done
    resumed: float = 0.0  # of which done before it started: kept from a preempted attempt's checkpoint
    preempted: int = 0  # how many earlier attempts were preempted (they use no retry)
    stop_at: float | None = None  # preempted: the work done when it stops (the end of its epoch under way)
    end: float | None = None
    outcome: str | None = None  # succeeded | oom | oom_other | failed | preempted

    def usage_mb(self) -> float:
        grown = self.done / (GROWTH_FRACTION * self.job.duration_s)
        return self.job.peak_mb * min(1.0, grown)

    def growing(self) -> bool:
        return self.done < GROWTH_FRACTION * self.job.duration_s - EPS

    def stopped(self) -> bool:
        """Preempted, and at the end of its epoch under way: it stops now."""
        return self.stop_at is not None and self.done >= self.stop_at - EPS


@dataclass
class Waiting:
    index: int
    job: TraceJob
    request_mb: int
    number: int = 1
    done: float = 0.0  # work kept from a preempted attempt (its last checkpoint, less Simulation.restart_s)
    preempted: int = 0


@dataclass
class Room:
    """Where room is made for a queued job (it preempted others, or it is moved), until it starts: on `gpus`
    (those where its decisions stopped jobs), once the jobs stopping for it (`stopping`, by index) have, at
    `made`."""

    node: int
    move: bool
    gpus: set[int] = field(default_factory=set)
    stopping: set[int] = field(default_factory=set)
    made: float | None = None
    taken_by_another: bool = False  # a job started on its GPUs after it was made


@dataclass
class Result:
    attempts: list[Attempt] = field(default_factory=list)
    first_start: dict[int, float] = field(default_factory=dict)
    finished: dict[int, tuple[float, bool]] = field(default_factory=dict)  # index -> (end, succeeded)
    refused: list[int] = field(default_factory=list)  # indices of jobs no node could ever hold
    decisions: int = 0
    preemptions: int = 0  # attempts preempted
    rooms_made: int = 0  # preemptions decided (the jobs of one GPU stopped for one job)
    rooms_taken: int = 0  # of which the job they were made for started there (before any other job, once made)
    rooms_overtaken: int = 0  # of which that job started elsewhere while they stopped, sooner
    moves: int = 0  # jobs stopped to resume on a GPU that drains sooner (policy.moves)
    # Ledger policies: each job's time queued by what it lacked (Wait.kind: memory, compute, held...).
    waited: defaultdict[int, defaultdict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )


class Simulation:
    def __init__(
        self,
        trace: list[TraceJob],
        gpu_sizes_mb: list[int],
        nodes: int = 1,
        policy: str = "vramq",
        max_retries: int = 3,
        half_life_s: float = 24 * 3600,
        estimates: Estimates = Estimates(),
        config: PolicyConfig | None = None,
        restart_s: float = 0.0,
    ) -> None:
        """`config` replaces a ledger policy's settings (bench/targets.py --set explores them). `restart_s`: what
        resuming from a checkpoint costs a preempted or moved job, in seconds of its solo work (the process, the
        framework and the data pipeline start again and the checkpoint loads): it resumes that much short of its
        checkpoint. 0: a restart is free; below 0 (or not finite) is refused."""
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        if config is not None and policy not in CONFIGS:
            raise ValueError(f"policy {policy!r} has no settings to replace")
        if not 0 <= restart_s < math.inf:
            raise ValueError(f"restart cost {restart_s:g} s: give a number of seconds, 0 or more")
        self.trace = sorted(enumerate(trace), key=lambda item: (item[1].submit_s, item[0]))
        self.sizes = gpu_sizes_mb
        self.nodes = nodes
        self.policy = policy
        self.max_retries = max_retries
        self.restart_s = restart_s
        self.estimates = estimates
        self.config = config or CONFIGS.get(policy)
        self.usage = DecayedUsage(half_life_s)
        self.result = Result()
        self.running: list[Attempt] = []
        self.on: defaultdict[tuple[int, int], list[Attempt]] = defaultdict(list)  # per GPU, in start order
        self.waiting: list[Waiting] = []
        self.now = 0.0
        self.measured: set[tuple[str, int, int]] = set()  # fingerprints of the jobs that have started
        # Jobs that preempted others or were moved, not started since (policy.schedule's making_room).
        self.room: dict[int, Room] = {}
        self.lacking: dict[int, tuple[float, str]] = {}  # queued job -> (since, what the last decision said)

    # --- state ------------------------------------------------------------------------------------

    def _on(self, node: int, gpu: int) -> list[Attempt]:
        return self.on[node, gpu]

    def _rates(self) -> dict[int, float]:
        """Each running attempt's speed (by id): 1/load of its most loaded GPU, when that is over 1."""
        load = {key: sum(a.job.util for a in on) for key, on in self.on.items() if on}
        return {id(a): 1.0 / max(1.0, max(load[a.node, g] for g in a.gpus)) for a in self.running}

    def _reserved(self, node: int, gpu: int) -> int:
        return sum(a.request_mb for a in self._on(node, gpu))

    def _used(self, node: int, gpu: int) -> float:
        return sum(a.usage_mb() for a in self._on(node, gpu))

    # --- decisions --------------------------------------------------------------------------------

    def _decide(self) -> list[tuple[Waiting, int, tuple[int, ...]]]:
        self.result.decisions += 1
        if self.policy in CONFIGS:
            return self._decide_ledger()
        if self.policy == "exclusive":
            return self._decide_simple(lambda n, g, w: not self._on(n, g), strict=True)
        return self._decide_simple(lambda n, g, w: self.sizes[g] - self._used(n, g) >= w.request_mb, strict=False)

    def _decide_ledger(self) -> list[tuple[Waiting, int, tuple[int, ...]]]:
        rates = self._rates()
        nodes = [
            NodeState(
                str(n),
                10**6,
                tuple(
                    GpuState(g, size - self._reserved(n, g), sum(a.job.util for a in self._on(n, g)))
                    for g, size in enumerate(self.sizes)
                ),
            )
            for n in range(self.nodes)
        ]
        running = [
            RunningJob(
                str(a.node),
                a.gpus,
                a.request_mb,
                a.job.util,
                self.now + (min(a.job.duration_s, a.stop_at or math.inf) - a.done) / rates[id(a)],
                a.index,
                # Once it has an epoch of its own: a stop comes at the end of the epoch under way.
                (_stop_mark(a) - a.done) / rates[id(a)] if a.done - a.resumed >= EPOCH_S - EPS else None,
                a.stop_at is not None,
                resumed=a.preempted > 0,
            )
            for a in self.running
        ]
        known = self.estimates
        pending = [
            PendingJob(
                w.index,
                w.request_mb,
                w.job.gpus,
                0,
                w.job.submit_s,
                w.job.user,
                w.job.util if known.util_known or _fingerprint(w.job) in self.measured else DEFAULT_UTIL,
                *_planned(w, known),
            )
            for w in self.waiting
        ]
        self.usage.advance(self.now)
        users = {user: UserState(usage=value) for user, value in self.usage.value.items()}
        assert self.config is not None
        decision = schedule(
            pending,
            nodes,
            self.now,
            running=running,
            users=users,
            config=self.config,
            making_room=self.room.keys(),
            moving_to={index: (str(room.node), min(room.gpus)) for index, room in self.room.items() if room.move},
        )
        for index, (since, kind) in self.lacking.items():
            self.result.waited[index][kind] += self.now - since
        self.lacking = {index: (self.now, wait.kind) for index, wait in decision.waiting.items()}
        by_index = {w.index: w for w in self.waiting}
        for preemption in decision.preemptions:
            self._make_room(preemption)
        return [(by_index[p.job_id], int(p.node), p.gpu_indices) for p in decision.placements]

    def _make_room(self, preemption: Preemption) -> None:
        """Stop the preemption's jobs at the end of their epoch under way, for the room of its job."""
        victims = [a for a in self.running if a.index in preemption.job_ids]
        room = self.room.get(preemption.for_job)
        if room is None or room.node != int(preemption.node):
            room = self.room[preemption.for_job] = Room(int(preemption.node), preemption.move)
        fresh = any(a.stop_at is None for a in victims)  # named again while they stop, it counts once
        if fresh or preemption.move:
            room.gpus.add(preemption.gpu)
        if fresh:
            self.result.moves += preemption.move
            self.result.rooms_made += not preemption.move
        for a in victims:
            room.stopping.add(a.index)
            room.made = None
            if a.stop_at is None:
                a.stop_at = _stop_mark(a)
            if a.stopped():
                self._end(a, "preempted")

    def _decide_simple(
        self, free: Callable[[int, int, Waiting], bool], strict: bool
    ) -> list[tuple[Waiting, int, tuple[int, ...]]]:
        """FIFO; `free(node, gpu, job)` says whether a GPU can take the job (no ledger)."""
        starts = []
        taken: set[tuple[int, int]] = set()
        for w in sorted(self.waiting, key=lambda w: (w.job.submit_s, w.index)):
            placed = False
            for n in range(self.nodes):
                gpus = [g for g in range(len(self.sizes)) if (n, g) not in taken and free(n, g, w)]
                if len(gpus) >= w.job.gpus:
                    chosen = tuple(gpus[: w.job.gpus])
                    if self.policy == "exclusive":
                        taken.update((n, g) for g in chosen)
                    starts.append((w, n, chosen))
                    placed = True
                    break
            if strict and not placed:
                break
        return starts

    def _start(self, waiting: Waiting, node: int, gpus: tuple[int, ...]) -> None:
        self.waiting.remove(waiting)
        attempt = Attempt(
            waiting.job,
            waiting.index,
            waiting.number,
            waiting.request_mb,
            node,
            gpus,
            self.now,
            waiting.done,
            waiting.done,
            waiting.preempted,
        )
        self.running.append(attempt)
        room = self.room.pop(waiting.index, None)
        if room is not None and not room.move:
            # Taken: before another job took it once made (while its jobs stopped, one that ends by then may
            # start there), or before it was made (the others left room enough); or, while they stopped, the job
            # found room elsewhere sooner.
            taken = room.gpus & set(gpus) if room.node == node and not room.taken_by_another else set()
            self.result.rooms_taken += len(taken)
            if room.made is None:
                self.result.rooms_overtaken += len(room.gpus - taken)
        for other in self.room.values():
            if other.node == node and other.made is not None and other.gpus & set(gpus):
                other.taken_by_another = True
        for gpu in gpus:
            self.on[node, gpu].append(attempt)
        self.result.attempts.append(attempt)
        self.measured.add(_fingerprint(waiting.job))
        self.result.first_start.setdefault(waiting.index, self.now)
        self.usage.advance(self.now)
        self.usage.reserve(waiting.job.user, waiting.request_mb * len(gpus) / 1024)

    def _end(self, attempt: Attempt, outcome: str) -> None:
        attempt.end, attempt.outcome = self.now, outcome
        self.running.remove(attempt)
        for room in self.room.values():  # stopped, or ended first
            if attempt.index in room.stopping:
                room.stopping.discard(attempt.index)
                room.made = None if room.stopping else self.now
        for gpu in attempt.gpus:
            self.on[attempt.node, gpu].remove(attempt)
        self.usage.advance(self.now)
        self.usage.reserve(attempt.job.user, -attempt.request_mb * len(attempt.gpus) / 1024)
        job = attempt.job
        if outcome == "succeeded":
            self.result.finished[attempt.index] = (self.now, True)
        elif outcome == "preempted":
            self.result.preemptions += 1
            done = max(0.0, attempt.done - _unsaved(attempt) - self.restart_s)
            self.waiting.append(
                Waiting(attempt.index, job, attempt.request_mb, attempt.number + 1, done, attempt.preempted + 1)
            )
        elif attempt.number - attempt.preempted <= self.max_retries:
            request = attempt.request_mb
            if outcome == "oom" and self.policy in CONFIGS:
                request = grown_request(request, max(self.sizes))
            self.waiting.append(Waiting(attempt.index, job, request, attempt.number + 1))
        else:
            self.result.finished[attempt.index] = (self.now, False)
        if outcome == "oom" and self.policy in CONFIGS:
            self._grow_alike(attempt)

    def _grow_alike(self, attempt: Attempt) -> None:
        """Queued jobs of the attempt's fingerprint that ask as little would run out of memory alike: they ask
        for its grown request too (as the live worker grows them: sizing.grow_alike)."""
        grown = grown_request(attempt.request_mb, max(self.sizes))
        for waiting in self.waiting:
            if _fingerprint(waiting.job) == _fingerprint(attempt.job) and waiting.request_mb <= attempt.request_mb:
                waiting.request_mb = grown

    def holdable(self, job: TraceJob) -> bool:
        """Whether an idle node could take the job: `gpus` of its GPUs each as large as the request."""
        room = per_gpu_room(self.sizes, job.gpus)  # the rule the live intake applies (check_satisfiable)
        return room is not None and room >= job.vram_mb

    # --- events -----------------------------------------------------------------------------------

    def _cap_mb(self, attempt: Attempt) -> float:
        """The memory at which the attempt fails by itself: its request under a ledger, else its GPU."""
        if self.policy in CONFIGS:
            return attempt.request_mb
        return min(self.sizes[g] for g in attempt.gpus)

    def _cap_mark(self, attempt: Attempt) -> float | None:
        """The work done when the attempt's memory reaches its cap and it fails; None: its peak fits."""
        cap, job = self._cap_mb(attempt), attempt.job
        return GROWTH_FRACTION * job.duration_s * cap / job.peak_mb if job.peak_mb > cap else None

    def _milestone(self, attempt: Attempt) -> float:
        """The work done at the attempt's next event: its memory reaching its cap, its growth ending, its end."""
        marks = [attempt.job.duration_s, self._cap_mark(attempt), attempt.stop_at]
        if attempt.growing():
            marks.append(GROWTH_FRACTION * attempt.job.duration_s)
        return min(mark for mark in marks if mark is not None)

    def _next_event(
        self, next_arrival: float, rates: dict[int, float]
    ) -> tuple[float, dict[int, float], set[tuple[int, int]]]:
        """When the next thing happens; the work done then by each attempt whose own milestone it is (reached
        exactly, however the clock rounds: else a milestone closer than it can resolve is never reached);
        and the GPUs (free-memory) whose growing jobs overflow them then."""
        soonest, marks = next_arrival, {}
        for a in self.running:
            mark = self._milestone(a)
            marks[id(a)] = (self.now + max(0.0, mark - a.done) / rates[id(a)], mark)
            soonest = min(soonest, marks[id(a)][0])
        overflows = self._overflows(rates) if self.policy == "free-memory" else {}
        soonest = min([soonest, *overflows.values()])
        reached = {key: mark for key, (at, mark) in marks.items() if at <= soonest}
        return soonest, reached, {gpu for gpu, at in overflows.items() if at <= soonest}

    def _overflows(self, rates: dict[int, float]) -> dict[tuple[int, int], float]:
        """When the growing jobs on each GPU that has some first need more memory than it has."""
        times = {}
        for n in range(self.nodes):
            for g, size in enumerate(self.sizes):
                on = self._on(n, g)
                slope = sum(
                    a.job.peak_mb / (GROWTH_FRACTION * a.job.duration_s) * rates[id(a)] for a in on if a.growing()
                )
                if slope > 0:
                    times[n, g] = self.now + max(0.0, size - self._used(n, g)) / slope
        return times

    def _settle(self, full: set[tuple[int, int]]) -> None:
        """End what the clock has reached: completions, caps hit, GPUs overflowing (`full`: those whose
        overflow is now, whatever the rounding of the memory they hold, unless a job there just ended)."""
        freed: set[tuple[int, int]] = set()
        for a in list(self.running):
            mark = self._cap_mark(a)
            if mark is not None and a.done >= mark:
                self._end(a, "oom")
            elif a.done >= a.job.duration_s - EPS:
                self._end(a, "succeeded")
            elif a.stopped():
                self._end(a, "preempted")
            else:
                continue
            freed.update((a.node, g) for g in a.gpus)
        if self.policy == "free-memory":
            for n in range(self.nodes):
                for g, size in enumerate(self.sizes):
                    due = (n, g) in full - freed
                    while due or self._used(n, g) >= size - 1e-6:  # full, and someone still needs more
                        due = False
                        victim = max((a for a in self._on(n, g) if a.growing()), key=lambda a: a.start, default=None)
                        if victim is None:
                            break
                        self._end(victim, "oom" if victim.usage_mb() > victim.request_mb else "oom_other")

    def run(self) -> Result:
        arrivals = list(self.trace)
        while arrivals or self.waiting or self.running:
            while arrivals and arrivals[0][1].submit_s <= self.now + EPS:
                index, job = arrivals.pop(0)
                if self.holdable(job):
                    self.waiting.append(Waiting(index, job, job.vram_mb))
                else:
                    self.result.refused.append(index)
            # Again at once after preemptions, for the jobs they made room for (which may preempt in turn), as
            # the live loop does a second later. Bounded for safety (each pass that preempts stops a running job, and
            # a job stopped may start again and be stopped in turn), with room for a cascade of rooms at one instant.
            for _ in range(len(self.running) + len(self.waiting) + 1):
                preempted = self.result.preemptions
                if self.waiting:
                    for waiting, node, gpus in self._decide():
                        self._start(waiting, node, gpus)
                if self.result.preemptions == preempted:
                    break
            next_arrival = arrivals[0][1].submit_s if arrivals else math.inf
            rates = self._rates()
            soonest, reached, full = self._next_event(next_arrival, rates)
            if soonest == math.inf:
                for w in list(self.waiting):  # nothing runs, nothing arrives: these can never start
                    self.result.finished[w.index] = (self.now, False)
                    self.waiting.remove(w)
                break
            elapsed = max(0.0, soonest - self.now)
            for a in self.running:
                if id(a) in reached:
                    a.done = reached[id(a)]
                else:
                    a.done = min(a.job.duration_s, a.done + elapsed * rates[id(a)])
            self.now = soonest
            self._settle(full)
        return self.result


def _planned(w: Waiting, known: Estimates) -> tuple[float, bool]:
    """A queued job's run time as the policy knows it, and whether that is a time limit: its history's or
    its limit, or once preempted, what is left past its checkpoint when sooner (live: progress.keep_left
    and inputs.pending_jobs)."""
    planned = w.job.duration_s * (known.limit_factor or 1.0)
    left = w.job.duration_s - w.done
    if w.done and left < planned:
        return left, False
    return planned, known.limit_factor is not None


def _unsaved(attempt: Attempt) -> float:
    """The attempt's work since its last checkpoint: the end of its last epoch (epochs counted from the
    checkpoint it resumed from, or from its start)."""
    since = attempt.done - attempt.resumed
    return since - EPOCH_S * math.floor(since / EPOCH_S + EPS)


def _stop_mark(attempt: Attempt) -> float:
    """The work done when a preempted attempt stops: at the end of its epoch under way (at once, at the end of
    one)."""
    unsaved = _unsaved(attempt)
    return attempt.done if unsaved < EPS else attempt.done - unsaved + EPOCH_S


def _fingerprint(job: TraceJob) -> tuple[str, int, int]:
    """What stands for a trace job's fingerprint (user, command and script live)."""
    return job.user, job.vram_mb, job.gpus
