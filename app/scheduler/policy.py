"""The scheduling policy: (pending jobs, cluster state, now) -> placements, and why the others wait.

Pure functions over plain data: the live scheduler (loop.py) and the simulator (app/simulator/) call
the same `schedule`, so what the benchmark measures is what runs.

- Order: fair share across users (least decayed usage first, charged as jobs are placed), then job
  priority, then submission. Without fair share: priority, then submission.
- Placement: among GPUs whose expected compute load stays within the cap with the job, the one whose
  known work outlasts the job, then the tightest memory fit: memory is packed without stacking compute far
  past saturation, and GPUs of short jobs drain together.
- Critical path: a job whose own run time is most of the known work left starts first, where it
  least raises the projected end of the known work (processor sharing, `_finish`), and no later job
  may push its GPU past saturation. When every GPU with room now would have it share compute with
  a long job, and running jobs elsewhere end soon enough, it waits for them instead (a reservation).
- No starvation: the first job in that order that cannot start gets a reservation in time (the
  earliest moment its GPUs free up, from running jobs' expected ends). A later job may start ahead
  of it (backfill) only where it cannot delay it: elsewhere, or finishing before that moment, or
  leaving it room. With unknown ends the reserved GPUs take no backfill at all.
"""

import heapq
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_UTIL = 0.5  # Lucid's median solo utilisation (48%), for a job with no history yet
NOMINAL_HOURS = 1.0  # fair-share charge for a placed job of unknown duration


@dataclass(frozen=True)
class GpuState:
    index: int
    available_mb: int  # total - reservations - foreign memory - safety margin
    util: float = 0.0  # expected compute load of the jobs reserved on it (sum of their utilisations)


@dataclass(frozen=True)
class NodeState:
    name: str
    free_slots: int  # workers that can start one more job now
    gpus: tuple[GpuState, ...]


@dataclass(frozen=True)
class PendingJob:
    id: int
    vram_mb: int
    gpus: int = 1
    priority: int = 0
    submitted: float = 0.0
    user: str = ""
    util: float = DEFAULT_UTIL
    duration_s: float | None = None  # expected run time (its time limit, or history); None: unknown


@dataclass(frozen=True)
class RunningJob:
    node: str
    gpu_indices: tuple[int, ...]
    vram_mb: int
    util: float = DEFAULT_UTIL
    expected_end: float | None = None  # None: unknown (no time limit, progress or history, or past them)


@dataclass(frozen=True)
class UserState:
    usage: float = 0.0  # reserved VRAM GB-hours, exponentially decayed (fairshare.py)
    running: int = 0
    reserved_mb: int = 0


@dataclass(frozen=True)
class Quotas:
    """Per-user limits on what may run at once (None: unlimited)."""

    running: int | None = None
    reserved_mb: int | None = None


@dataclass(frozen=True)
class PolicyConfig:
    fair_share: bool = True
    backfill: bool = True  # False: strict order, the first job that cannot start blocks the rest
    compute_cap: float | None = 1.6  # expected compute load a GPU may reach (tuned: bench/policies.py)
    critical_share: float | None = 0.9  # jobs this long relative to the packed work ahead start first
    quotas: Quotas = Quotas()


@dataclass(frozen=True)
class Placement:
    job_id: int
    node: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class Wait:
    reason: str
    estimated_start: float | None = None


@dataclass
class Decision:
    placements: list[Placement] = field(default_factory=list)
    waiting: dict[int, Wait] = field(default_factory=dict)


@dataclass
class _Reservation:
    """The head job's claim on future capacity: what its GPUs will hold at `start`."""

    job: PendingJob
    node: str
    gpus: tuple[int, ...]
    start: float | None  # None: unknown (a running job there has no expected end)
    free_at_start: dict[int, int]
    util_at_start: dict[int, float]


class _Cluster:
    """Mutable working copy of the state, charged as placements are made."""

    def __init__(self, nodes: Sequence[NodeState], running: Sequence[RunningJob], now: float) -> None:
        self.nodes = {node.name: node for node in nodes}
        self.free = {(n.name, g.index): g.available_mb for n in nodes for g in n.gpus}
        self.util = {(n.name, g.index): g.util for n in nodes for g in n.gpus}
        self.slots = {n.name: n.free_slots for n in nodes}
        self.running = list(running)
        self.protected: set[tuple[str, int]] = set()  # GPUs running a critical job: never pushed past 1.0
        self.avoid: set[tuple[str, int]] = set()  # GPUs a placement being tried must not use
        self.ranked = {n.name: self._ranked(n.name) for n in nodes}  # each node's free memory, largest first
        self.most_free = max(self.free.values(), default=0)
        self.version = 0  # bumped by every placement: cached explanations are stale after one
        self.reasons: dict[tuple, str] = {}
        self.blocked = "memory"  # what the last failed best_fit lacked
        self.drain: dict[tuple[str, int], float] = {}  # when each GPU's known work ends
        self.work: dict[tuple[str, int], list[tuple[float, float]]] = {k: [] for k in self.free}
        self.background = dict.fromkeys(self.free, 0.0)  # load of jobs with unknown ends
        for job in self.running:
            load = max((self.util.get((job.node, i), 0.0) for i in job.gpu_indices), default=0.0)
            left = max(0.0, job.expected_end - now) / max(1.0, load) if job.expected_end is not None else 0.0
            for index in job.gpu_indices:
                if (job.node, index) in self.free:
                    self._add_work((job.node, index), job.expected_end, left, job.util)
        self.finish = {k: _finish(now, self.work[k], self.background[k]) for k in self.free}
        self.horizon = max(self.finish.values(), default=now)

    def _add_work(self, key: tuple[str, int], end: float | None, left: float, util: float) -> None:
        """A job on the GPU: known work (`left` solo seconds, ending at `end`), or with `end` unknown, a load
        that never drains."""
        if end is None:
            self.background[key] += util
        else:
            self.drain[key] = max(self.drain.get(key, 0.0), end)
            self.work[key].append((left, util))

    def _ranked(self, node: str) -> list[int]:
        return sorted((self.free[node, g.index] for g in self.nodes[node].gpus), reverse=True)

    def ok(self, job: PendingJob, key: tuple[str, int], cap: float | None, critical: bool) -> bool:
        if self.free[key] < job.vram_mb or key in self.avoid:
            return False
        if critical or cap is None:
            return True
        load = self.util[key] + job.util
        return load <= (1.0 if key in self.protected else cap)

    def fitting(self, job: PendingJob, node: str, cap: float | None, now: float, critical: bool = False) -> list[tuple]:
        """(preference..., index) of the node's GPUs that can take the job now, best first.

        A critical job (its run time is known) takes the GPU where it raises the projected end of all
        known work least, then where it ends soonest. Others take the GPU whose known work outlasts
        them (so GPUs of short jobs drain together and a big job finds one empty), then the tightest
        memory fit.
        """
        keys = [(node, gpu.index) for gpu in self.nodes[node].gpus]
        if critical and job.duration_s is not None:
            ranked = []
            for k in keys:
                if self.ok(job, k, cap, True):
                    raised = max(self.horizon, self.projected(job, k, now))
                    ranked.append((raised, self.projected(job, k, now, own=True), self.free[k], k[1]))
            return sorted(ranked)
        fitting = []
        for k in keys:
            if self.ok(job, k, cap, False):
                end = now + job.duration_s * max(1.0, self.util[k] + job.util) if job.duration_s is not None else now
                fitting.append((max(0.0, end - self.drain.get(k, now)), self.free[k], k[1]))
        return sorted(fitting)

    def best_fit(self, job: PendingJob, cap: float | None, now: float, critical: bool = False) -> Placement | None:
        """The best placement now, or None with `self.blocked` saying what is short: memory, slots, compute."""
        self.blocked = "memory"
        if job.vram_mb > self.most_free:
            return None  # the common case with a long queue: nothing has room
        best: tuple[tuple, Placement] | None = None
        for name in self.nodes:
            ranked = self.ranked[name]
            if len(ranked) < job.gpus or ranked[job.gpus - 1] < job.vram_mb:
                continue
            if self.slots[name] < 1:
                self.blocked = "slots" if self.blocked == "memory" else self.blocked
                continue
            self.blocked = "compute"
            fitting = self.fitting(job, name, cap, now, critical)
            if len(fitting) < job.gpus:
                continue
            chosen = fitting[: job.gpus]
            score = (tuple(sum(c[i] for c in chosen) for i in range(len(chosen[0]) - 1)), name)
            if best is None or score < best[0]:
                best = (score, Placement(job.id, name, tuple(sorted(c[-1] for c in chosen))))
        return best[1] if best else None

    def projected(self, job: PendingJob, key: tuple[str, int], now: float, own: bool = False) -> float:
        """When the GPU's known work would end with `job` added; with `own`, when `job` would."""
        assert job.duration_s is not None
        work = self.work[key]
        if own:  # the others' work beyond the job's own end does not delay it
            work = [(min(left, job.duration_s), util) for left, util in work]
        return _finish(now, [*work, (job.duration_s, job.util)], self.background[key])

    def take(self, job: PendingJob, placement: Placement, now: float, critical: bool = False) -> None:
        self.slots[placement.node] -= 1
        for index in placement.gpu_indices:
            self.free[placement.node, index] -= job.vram_mb
            self.util[placement.node, index] += job.util
            if critical:
                self.protected.add((placement.node, index))
        self.ranked[placement.node] = self._ranked(placement.node)
        self.most_free = max(self.free.values(), default=0)
        self.version += 1
        end = now + job.duration_s if job.duration_s is not None else None
        self.running.append(RunningJob(placement.node, placement.gpu_indices, job.vram_mb, job.util, end))
        for index in placement.gpu_indices:
            key = (placement.node, index)
            self._add_work(key, end, job.duration_s or 0.0, job.util)
            self.finish[key] = _finish(now, self.work[key], self.background[key])
            self.horizon = max(self.horizon, self.finish[key])


def _finish(now: float, work: list[tuple[float, float]], background: float) -> float:
    """When a GPU's known work ends under processor sharing: its jobs (solo seconds left, utilisation)
    all progress at one rate, 1/max(1, load), so they end in order of work left."""
    end, done, load = now, 0.0, background + sum(util for _, util in work)
    for left, util in sorted(work):
        end += (left - done) * max(1.0, load)
        done, load = left, load - util
    return end


def fair_order(pending: Iterable[PendingJob], users: dict[str, UserState], fair_share: bool) -> list[list[PendingJob]]:
    """Per-user queues (or one queue without fair share), each by priority then submission."""

    def key(job: PendingJob) -> tuple[int, float, int]:
        return (-job.priority, job.submitted, job.id)

    if not fair_share:
        return [sorted(pending, key=key)]
    queues: dict[str, list[PendingJob]] = defaultdict(list)
    for job in pending:
        queues[job.user].append(job)
    return [
        sorted(queue, key=key)
        for _, queue in sorted(queues.items(), key=lambda kv: users.get(kv[0], UserState()).usage)
    ]


def critical_path(
    pending: Sequence[PendingJob], running: Sequence[RunningJob], gpu_count: int, now: float, share: float
) -> tuple[set[int], list[RunningJob]]:
    """Jobs long enough to set the makespan: those whose own run time, stretched by the GPUs' mean load
    (a job started now on busy GPUs runs at about 1/load of its solo speed), is at least `share` of the
    time the known work needs on all GPUs perfectly packed. They start first, on GPUs that do not slow
    them; running jobs that long are protected from being slowed."""
    work = sum(max(0.0, r.expected_end - now) * r.util * len(r.gpu_indices) for r in running if r.expected_end)
    work += sum(p.duration_s * p.util * p.gpus for p in pending if p.duration_s is not None)
    load = sum(r.util * len(r.gpu_indices) for r in running) / max(1, gpu_count)
    horizon = share * work / max(1, gpu_count) / max(1.0, load)
    jobs = {p.id for p in pending if p.duration_s is not None and p.duration_s >= horizon}
    return jobs, [r for r in running if r.expected_end is not None and r.expected_end - now >= horizon]


def schedule(
    pending: Sequence[PendingJob],
    nodes: Sequence[NodeState],
    now: float,
    *,
    running: Sequence[RunningJob] = (),
    users: dict[str, UserState] | None = None,
    config: PolicyConfig = PolicyConfig(),
) -> Decision:
    users = users or {}
    cluster = _Cluster(nodes, running, now)
    decision = Decision()
    counts = {name: [state.running, state.reserved_mb] for name, state in users.items()}
    reservation: _Reservation | None = None
    blocked_by: PendingJob | None = None
    critical: set[int] = set()
    if config.critical_share is not None:
        gpu_count = sum(len(node.gpus) for node in nodes)
        critical, protected = critical_path(pending, running, gpu_count, now, config.critical_share)
        cluster.protected = {(r.node, i) for r in protected for i in r.gpu_indices}

    def consider(job: PendingJob) -> bool:
        """Place the job or record why it waits; True when placed."""
        nonlocal reservation, blocked_by
        if blocked_by is not None and not config.backfill:
            decision.waiting[job.id] = Wait(f"waiting behind job {blocked_by.id} (strict order)")
            return False
        quota = _quota_reason(job, counts.get(job.user, [0, 0]), config.quotas)
        if quota:
            decision.waiting[job.id] = Wait(quota)
            return False
        urgent = job.id in critical
        placement = cluster.best_fit(job, config.compute_cap, now, urgent)
        blocked = cluster.blocked
        later = None
        if urgent and placement is not None and job.duration_s is not None:
            later = _sooner_later(cluster, job, placement, now)
            if later is not None:
                placement, blocked = None, "critical"
        if placement is not None and reservation is not None:
            placement = _respecting(cluster, job, placement, reservation, now, config.compute_cap)
            if placement is None:  # not there: anywhere but the held GPUs
                cluster.avoid = {(reservation.node, i) for i in reservation.gpus}
                placement = cluster.best_fit(job, config.compute_cap, now, urgent)
                cluster.avoid = set()
                blocked = "held"
        if placement is not None:
            cluster.take(job, placement, now, urgent)
            decision.placements.append(placement)
            user_counts = counts.setdefault(job.user, [0, 0])
            user_counts[0] += 1
            user_counts[1] += job.vram_mb * job.gpus
            return True
        if blocked_by is None:
            blocked_by = job
            if config.backfill:
                reservation = later or _reserve(cluster, job, now, config.compute_cap)
        start = reservation.start if reservation is not None and reservation.job is job else None
        decision.waiting[job.id] = Wait(_why(cluster, job, blocked, reservation, config.compute_cap), start)
        return False

    for job in sorted((p for p in pending if p.id in critical), key=lambda p: (-(p.duration_s or 0), p.id)):
        consider(job)
    rest = [p for p in pending if p.id not in critical]
    heap: list[tuple[float, tuple[int, float, int], int, deque[PendingJob]]] = []
    for n, ordered in enumerate(fair_order(rest, users, config.fair_share)):
        if ordered:
            first = ordered[0]
            usage = users.get(first.user, UserState()).usage if config.fair_share else 0.0
            heap.append((usage, (-first.priority, first.submitted, first.id), n, deque(ordered)))
    heapq.heapify(heap)
    while heap:
        charge, _, n, queue = heapq.heappop(heap)
        job = queue.popleft()
        if consider(job) and config.fair_share:
            hours = (job.duration_s / 3600) if job.duration_s is not None else NOMINAL_HOURS
            charge += job.vram_mb * job.gpus / 1024 * hours
        if queue:
            nxt = queue[0]
            heapq.heappush(heap, (charge, (-nxt.priority, nxt.submitted, nxt.id), n, queue))
    return decision


def _quota_reason(job: PendingJob, counts: list[int], quotas: Quotas) -> str | None:
    running, reserved = counts
    if quotas.running is not None and running >= quotas.running:
        return f"user quota: {quotas.running} running jobs"
    if quotas.reserved_mb is not None and reserved + job.vram_mb * job.gpus > quotas.reserved_mb:
        return f"user quota: {quotas.reserved_mb} MB reserved at once ({reserved} MB now)"
    return None


def _reserve(cluster: _Cluster, job: PendingJob, now: float, cap: float | None) -> _Reservation | None:
    """The earliest moment and GPUs at which `job` fits, from running jobs' expected ends."""
    best: _Reservation | None = None
    for name, node in cluster.nodes.items():
        if len(node.gpus) < job.gpus:
            continue
        ends = sorted({r.expected_end for r in cluster.running if r.node == name and r.expected_end is not None})
        for moment in [now, *ends]:
            free, util = _at(cluster, name, moment)
            ready = sorted((free[i], i) for i in free if free[i] >= job.vram_mb and (cap is None or util[i] < cap))
            if len(ready) >= job.gpus:
                if best is None or best.start is None or moment < best.start:
                    gpus = tuple(sorted(i for _, i in ready[: job.gpus]))
                    best = _Reservation(job, name, gpus, moment, free, util)
                break
    if best is not None:
        return best
    # No known end frees enough: hold the GPUs closest to fitting, among those that ever could (with
    # every running job gone), until the jobs with unknown ends leave.
    candidates = []
    for name in cluster.nodes:
        potential = _potential(cluster, name)
        able = sorted((i for i in potential if potential[i] >= job.vram_mb), key=lambda i: -cluster.free[name, i])
        if len(able) >= job.gpus:
            chosen = tuple(sorted(able[: job.gpus]))
            candidates.append((sum(cluster.free[name, i] for i in chosen), name, chosen))
    if not candidates:
        return None  # it cannot fit anywhere while the foreign memory stays
    _, name, chosen = max(candidates)
    free, util = _at(cluster, name, float("inf"))
    return _Reservation(job, name, chosen, None, free, util)


def _sooner_later(cluster: _Cluster, job: PendingJob, placement: Placement, now: float) -> _Reservation | None:
    """A reservation where the critical `job` ends sooner than on `placement` now, by waiting for running
    jobs to end instead of sharing compute with a long one; None: starting now is best."""
    assert job.duration_s is not None
    end_now = max(cluster.projected(job, (placement.node, i), now) for i in placement.gpu_indices)
    if end_now <= max(cluster.horizon, now + job.duration_s) * (1 + 1e-9):
        return None  # starting now sets no new end
    best: tuple[float, _Reservation] | None = None
    for name, node in cluster.nodes.items():
        if len(node.gpus) < job.gpus:
            continue
        ends = {r.expected_end for r in cluster.running if r.node == name and r.expected_end is not None}
        for moment in sorted(end for end in ends if end > now):
            if moment + job.duration_s >= end_now:
                break
            free, util = _at(cluster, name, moment)
            ready = sorted((util[i], i) for i in free if free[i] >= job.vram_mb)[: job.gpus]
            if len(ready) < job.gpus:
                continue
            end = max(
                max(moment + job.duration_s * max(1.0, load + job.util), cluster.finish[name, i]) for load, i in ready
            )
            if end < end_now and (best is None or end < best[0]):
                best = (end, _Reservation(job, name, tuple(sorted(i for _, i in ready)), moment, free, util))
    return best[1] if best else None


def _potential(cluster: _Cluster, node: str) -> dict[int, int]:
    """Free memory of a node's GPUs if every running job there ended."""
    free = {g.index: cluster.free[node, g.index] for g in cluster.nodes[node].gpus}
    for job in cluster.running:
        if job.node == node:
            for index in job.gpu_indices:
                free[index] += job.vram_mb
    return free


def _at(cluster: _Cluster, node: str, moment: float) -> tuple[dict[int, int], dict[int, float]]:
    """Free memory and compute load of a node's GPUs once the jobs expected to end by `moment` have."""
    free = {g.index: cluster.free[node, g.index] for g in cluster.nodes[node].gpus}
    util = {g.index: cluster.util[node, g.index] for g in cluster.nodes[node].gpus}
    for job in cluster.running:
        if job.node == node and job.expected_end is not None and job.expected_end <= moment:
            for index in job.gpu_indices:
                free[index] += job.vram_mb
                util[index] -= job.util
    return free, util


def _respecting(
    cluster: _Cluster, job: PendingJob, placement: Placement, reservation: _Reservation, now: float, cap: float | None
) -> Placement | None:
    """`placement` if it cannot delay the reserved head job, else None (a backfill that would)."""
    if placement.node != reservation.node or not set(placement.gpu_indices) & set(reservation.gpus):
        return placement
    if reservation.start is not None and job.duration_s is not None:
        # Sharing compute slows it: judge its end at the load it would run under.
        load = max(cluster.util[placement.node, i] + job.util for i in placement.gpu_indices)
        if now + job.duration_s * max(1.0, load) <= reservation.start:
            return placement
    head = reservation.job
    for index in set(placement.gpu_indices) & set(reservation.gpus):
        if reservation.start is None:
            return None
        room = reservation.free_at_start[index] - job.vram_mb
        load = reservation.util_at_start[index] + job.util
        if room < head.vram_mb or (cap is not None and load >= cap):
            return None
    for index in set(placement.gpu_indices) & set(reservation.gpus):
        reservation.free_at_start[index] -= job.vram_mb
        reservation.util_at_start[index] += job.util
    return placement


def _why(cluster: _Cluster, job: PendingJob, blocked: str, reservation: _Reservation | None, cap: float | None) -> str:
    """Why `job` cannot start now; `blocked` is what best_fit found short (memory, slots, compute, held)."""
    need = f"needs {job.vram_mb} MB" + (f" on each of {job.gpus} GPUs of one node" if job.gpus > 1 else " on one GPU")
    if not cluster.nodes:
        return "no live node"
    if blocked == "memory":
        key = ("memory", cluster.version)
        if key not in cluster.reasons:
            most, where = max(((free, key) for key, free in cluster.free.items()), default=(0, ("-", 0)))
            cluster.reasons[key] = f"most available now: {most} MB on {where[0]} GPU {where[1]}"
        return f"{need}; {cluster.reasons[key]}"
    if blocked == "slots":
        return f"{need}; the nodes where it fits have no free worker slot"
    if blocked == "critical":
        return f"{need}; starting after running jobs end lets it finish sooner than sharing a GPU now"
    if blocked == "held" and reservation is not None:
        return f"{need}; the GPUs where it fits are held for job {reservation.job.id}, which waits longer"
    return f"{need}; the GPUs with that much free are compute-saturated (it would take them past {cap:g})"


def place(pending: Sequence[PendingJob], nodes: Sequence[NodeState], now: float) -> list[Placement]:
    """Placements only, with the default policy."""
    return schedule(pending, nodes, now).placements
