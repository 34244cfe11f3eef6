"""The scheduling policy: (pending jobs, cluster state, now) -> placements, and why the others wait.

Pure functions over plain data: the live scheduler (loop.py) and the simulator (app/simulator/) call
the same `schedule`, so what the benchmark measures is what runs.

- Order: fair share across users (least decayed usage first, charged as jobs are placed), then job
  priority, then submission. Without fair share: priority, then submission.
- Placement: among GPUs whose expected compute load stays within the cap with the job, the one whose
  known work outlasts the job, then the tightest memory fit: memory is packed without stacking compute far
  past saturation, and GPUs of short jobs drain together.
- Critical path: a job whose own run time is most of the known work left starts first (one too big to
  share a GPU before the others, then the longest), where it least raises the projected end of the
  known work (processor sharing, `finish_time`), past the compute cap if need be; planned on a time
  limit (an upper bound: the projection overstates the end, so a stack looks free when it is not), past
  the cap only onto a GPU not yet saturated. A later job may
  take its GPU past saturation only if that GPU's known work still ends by the projected end of all of
  it (short jobs fill the slack beside critical ones; none delays the end). When every GPU with room now
  would have it share compute with a long job, and running jobs elsewhere end soon enough, it waits for
  them instead (a reservation).
- Preemption: a critical job waiting for memory, whose reservation would have it end after every running
  job, stops the jobs of one GPU (of each GPU it needs, on one node) that have checkpointed an epoch
  (Decision.preemptions), where they stop soon (their epoch ends) and the job would start in the room at once;
  they finish their epoch, are queued again and resume from its checkpoint. The job they make room for is
  considered first from then on (`making_room`), so that it gets the room. A long job stopped so is moved
  instead: it resumes at once on another GPU where it fits (kept for it while it stops: `moving_to`). A
  big job may stop another big one with under PREEMPT_LEFT of its run time left, so that they end together;
  but not while more big jobs are queued than there are GPUs, unless it alone outlasts all known work. A job
  that has resumed is never stopped again (nor moved): no two jobs stop each other in turn forever.
- Moves: a checkpointed job on the GPU whose known work would end last, past the end of all known work
  packed perfectly, stops at its epoch's end and resumes on a GPU that drains sooner (`moves`, `moving_to`).
- No starvation: the first job in that order that cannot start gets a reservation in time (the
  earliest moment its GPUs free up, from running jobs' expected ends). A later job may start ahead
  of it (backfill) only where it cannot delay it: elsewhere, or finishing before that moment, or
  leaving it room. With unknown ends the reserved GPUs take no backfill at all.
"""

import heapq
import math
from collections import defaultdict, deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import combinations

from app.scheduler.cluster import (
    Cluster,
    Reservation,
    finish_time,
    potential,
    reserve,
    respecting,
    sooner_later,
)
from app.scheduler.state import (
    Decision,
    NodeState,
    PendingJob,
    Placement,
    PolicyConfig,
    Preemption,
    Quotas,
    RunningJob,
    UserState,
    Wait,
)

NOMINAL_HOURS = 1.0  # fair-share charge for a placed job of unknown duration
RESTART_S = 600.0  # what a stopped job is taken to lose by resuming: its start-up again (to measure on a GPU)
PREEMPT_WAIT = 0.05  # a critical job preempts only if it would wait this share of its run time (and RESTART_S) or more
PREEMPT_LEFT = 0.65  # nor queues again a job with this share of the critical job's run time or more still to run
PREEMPT_WORTH = 2.0  # and only where the wait it saves is this many times the wait for its jobs to stop, or more
MOVE_LAST = 0.99  # a job is moved off a GPU whose known work ends this close to the last end (of the time left)
MOVE_GAIN = 0.02  # where that end comes sooner by this share of the time left, and by RESTART_S at least


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
    pending: Sequence[PendingJob],
    running: Sequence[RunningJob],
    gpu_count: int,
    now: float,
    share: float,
    capacity_mb: int | None = None,
) -> tuple[set[int], list[RunningJob]]:
    """Jobs long enough to set the makespan: those whose own run time, stretched by the GPUs' mean load
    (a job started now on busy GPUs runs at about 1/load of its solo speed), is at least `share` of the
    time the known work needs on all GPUs perfectly packed. They start first, on GPUs that do not slow
    them; running jobs that long are protected from being slowed.

    So do queued jobs of more than half of `capacity_mb` (a GPU's memory for vramq's jobs) when, as no two
    of them fit on one GPU, their summed run times over the GPUs reach that share: together they set the
    makespan, and left to the end they would run a few at a time on otherwise idle GPUs."""
    load = sum(r.util * len(r.gpu_indices) for r in running) / max(1, gpu_count)
    horizon = share * known_work(pending, running, now) / max(1, gpu_count) / max(1.0, load)
    jobs = {p.id for p in pending if p.duration_s is not None and p.duration_s >= horizon}
    if capacity_mb is not None:
        big = [p for p in pending if p.duration_s is not None and too_big_to_share(p, capacity_mb)]
        if sum(p.duration_s * p.gpus for p in big if p.duration_s is not None) / max(1, gpu_count) >= horizon:
            jobs.update(p.id for p in big)
    return jobs, [r for r in running if r.expected_end is not None and r.expected_end - now >= horizon]


def too_big_to_share(job: PendingJob, capacity_mb: int) -> bool:
    """Over half of what vramq's jobs can hold on one GPU: no two such jobs fit on one GPU."""
    return 2 * job.vram_mb > capacity_mb


def known_work(pending: Sequence[PendingJob], running: Sequence[RunningJob], now: float) -> float:
    """The GPU-seconds of compute that the running jobs (to their expected ends) and the queued jobs of known
    run time need."""
    work = sum(max(0.0, r.expected_end - now) * r.util * len(r.gpu_indices) for r in running if r.expected_end)
    return work + sum(p.duration_s * p.util * p.gpus for p in pending if p.duration_s is not None)


def schedule(
    pending: Sequence[PendingJob],
    nodes: Sequence[NodeState],
    now: float,
    *,
    running: Sequence[RunningJob] = (),
    users: dict[str, UserState] | None = None,
    config: PolicyConfig = PolicyConfig(),
    making_room: Collection[int] = (),
    moving_to: Mapping[int, tuple[str, int]] | None = None,
) -> Decision:
    """`making_room`: queued jobs that preempted others or were moved (an earlier decision's
    Decision.preemptions), not placed since. They are considered first: the room made for them must not go to
    another job, such as a stopped one queued again. `moving_to`: the (node, GPU) each job moved (or moved out
    of a big job's way) was moved to: while it finishes its epoch, its room there is kept, so that it has
    somewhere to resume at once. Queued again, it goes where it fits best then (often there; the GPU named
    when it was moved is no better known than the others by then)."""
    users = users or {}
    moving_to = moving_to or {}
    cluster = Cluster(nodes, running, now)
    for moving in running:  # still finishing its epoch: its room where it goes is kept
        if moving.job_id is not None and moving.job_id in moving_to:
            cluster.hold(moving_to[moving.job_id], moving.vram_mb, moving.util)
    decision = Decision()
    counts = {name: [state.running, state.reserved_mb] for name, state in users.items()}
    reservation: Reservation | None = None
    blocked_by: PendingJob | None = None
    critical: set[int] = set()
    capacity = 0
    gpu_count = sum(len(node.gpus) for node in nodes)
    if config.critical_share is not None:
        # What vramq's jobs can hold on one GPU: free memory with every running job there gone.
        capacity = max((mb for name in cluster.nodes for mb in potential(cluster, name).values()), default=0)
        critical, protected = critical_path(pending, running, gpu_count, now, config.critical_share, capacity)
        cluster.protected = {(r.node, i) for r in protected for i in r.gpu_indices}

    def consider(job: PendingJob) -> bool:
        """Place the job or record why it waits; True when placed."""
        nonlocal reservation, blocked_by
        if blocked_by is not None and not config.backfill:
            decision.waiting[job.id] = Wait(f"waiting behind job {blocked_by.id} (strict order)", kind="order")
            return False
        quota = _quota_reason(job, counts.get(job.user, [0, 0]), config.quotas)
        if quota:
            decision.waiting[job.id] = Wait(quota, kind="quota")
            return False
        urgent = job.id in critical or job.id in making_room
        placement = cluster.best_fit(job, config.compute_cap, now, urgent)
        blocked = cluster.blocked
        later = None
        if urgent and placement is not None and job.duration_s is not None:
            later = sooner_later(cluster, job, placement, now)
            if later is not None:
                placement, blocked = None, "critical"
        if placement is not None and reservation is not None:
            room = reservation.job.id in making_room
            placement = respecting(cluster, job, placement, reservation, now, config.compute_cap, room)
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
                reservation = later or reserve(cluster, job, now, config.compute_cap)
        if reservation is not None and reservation.job is job:
            why = _why(cluster, job, blocked, reservation, config.compute_cap)
            if job.id in making_room:
                why += _room_being_made(cluster, reservation)
            # Held from now (its GPUs have room but not the compute, or no worker slot): when it starts is
            # the forecast's to say, not now.
            start = reservation.start if reservation.start is not None and reservation.start > now else None
            decision.waiting[job.id] = Wait(why, start, blocked)
            return False
        # Jobs alike in request and GPUs wait for the same reason until the next placement: one Wait for all.
        key = (job.vram_mb, job.gpus, blocked)  # the reservation, set once, is the same for all
        if key not in cluster.waits:
            cluster.waits[key] = Wait(_why(cluster, job, blocked, reservation, config.compute_cap), None, blocked)
        decision.waiting[job.id] = cluster.waits[key]
        return False

    # Jobs making room first, the largest request first: the room made for one that fitted nowhere goes to it,
    # not to a job moved out of its way (which fits elsewhere). Then those too big to share a GPU (they need one
    # of their own; the others fit beside other jobs), then the longest.
    def urgency(p: PendingJob) -> tuple:
        if p.id in making_room:
            return (0, -p.vram_mb, p.id)
        return (1, not too_big_to_share(p, capacity), -(p.duration_s or 0), p.id)

    ahead = critical | {p.id for p in pending if p.id in making_room}
    for job in sorted((p for p in pending if p.id in ahead), key=urgency):
        consider(job)
    rest = [p for p in pending if p.id not in ahead]
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
    if config.preempt and config.critical_share is not None:
        drained = now + known_work(pending, running, now) / max(1, gpu_count)  # all known work ends, packed perfectly
        queued_critical = [p for p in pending if p.id in critical]
        # More jobs too big to share a GPU queued than there are GPUs: big running jobs are kept (preemptions).
        rounds = sum(too_big_to_share(p, capacity) for p in pending) > gpu_count
        keep = capacity // 2 if rounds else None
        decision.preemptions = preemptions(
            cluster, queued_critical, running, decision.waiting, now, config.compute_cap, keep_mb=keep, drained=drained
        )
        held = {(reservation.node, i) for i in reservation.gpus} if reservation is not None else set()
        stopped = {i for p in decision.preemptions for i in p.job_ids}
        decision.preemptions += moves(
            cluster, drained, held | {(p.node, p.gpu) for p in decision.preemptions}, stopped, now
        )
    return decision


def moves(
    cluster: Cluster, drained: float, held: set[tuple[str, int]], stopped: set[int], now: float
) -> list[Preemption]:
    """Checkpointed jobs moved off the GPU whose known work ends last, to a GPU of its node that drains
    sooner. Only when that last end is after `drained` (when all known work would end, packed perfectly):
    the GPU then sets a new end on its own. A move stops the job at the end of its epoch, losing no work;
    it is queued again and considered first (`making_room`), where it ends soonest. Only where the last end
    comes sooner by MOVE_GAIN of the time left and RESTART_S at least (its restart); once per job (not one
    that resumed already); never onto `held` GPUs (the reservation's, or those a preemption empties); and on
    a node where a job is stopping (preempted or moved), not before it has."""
    if not cluster.finish:
        return []
    last = max(cluster.finish.values())
    if last <= max(now, drained):
        return []
    chosen: list[Preemption] = []
    used: set[tuple[str, int]] = set()
    settling = {job.node for job in cluster.running if job.stopping}  # until it has stopped, the GPUs' ends are off
    for key, end in sorted(cluster.finish.items(), key=lambda item: -item[1]):
        if end < now + MOVE_LAST * (last - now):
            break
        if key[0] in settling:
            continue
        best: tuple[float, Preemption, tuple[str, int]] | None = None
        for job in cluster.running:
            if job.gpu_indices != (key[1],) or job.node != key[0] or not _movable(job, cluster, stopped):
                continue
            assert job.job_id is not None
            left = cluster.left[job.job_id]
            rest = list(cluster.work[key])
            rest.remove((left, job.util))
            here = finish_time(now, rest, cluster.background[key])
            for there, free in cluster.free.items():
                if there == key or there[0] != key[0] or there in held | used or free < job.vram_mb:
                    continue
                moved = [*cluster.work[there], (left, job.util)]
                new = max(here, finish_time(now, moved, cluster.background[there]))
                if new <= end - max(RESTART_S, MOVE_GAIN * (last - now)) and (best is None or new < best[0]):
                    best = (new, Preemption(job.job_id, there[0], there[1], (job.job_id,)), there)
        if best is not None:
            chosen.append(best[1])
            used.update({key, best[2]})
    return chosen


def _movable(job: RunningJob, cluster: Cluster, stopped: set[int]) -> bool:
    return (
        job.job_id is not None
        and job.job_id in cluster.left
        and job.job_id not in stopped
        and job.stop_s is not None
        and not job.stopping
        and not job.resumed
    )


def preemptions(
    cluster: Cluster,
    critical: Sequence[PendingJob],
    running: Sequence[RunningJob],
    waiting: dict[int, Wait],
    now: float,
    cap: float | None = None,
    keep_mb: int | None = None,
    drained: float = math.inf,
) -> list[Preemption]:
    """Room for critical jobs waiting for memory, made by stopping jobs that resume from their last epoch
    checkpoint, where waiting for room would set a new end: the job's reservation starts so late that it would end
    after every running job. Only jobs with an epoch of their own are stopped (`stop_s`); one with PREEMPT_LEFT of
    the critical job's run time or more left (queued again, it would wait and then set an end of its own) only if
    it can resume at once on another GPU of the node (a move of its own, `_room_on`); and the jobs left beside the
    critical one must end within that share (else it would rather wait than share their compute). That may be
    another big job: of two that cannot share a GPU, the one with less left gives way, so that the big jobs end
    together rather than one after another (preemptive scheduling's longest remaining work first; the one that gave
    way can in turn stop only a job with less than that share of its own time left). And only where the wait for
    them to stop (the rest of their epoch: they lose no work) is small beside the wait saved, and where the job would
    then start at once, not still rather wait for a GPU that drains soon than share one (`_deferred`). With `keep_mb`
    (half a GPU, while more jobs that big are queued than there are GPUs), no running job over `keep_mb` is stopped,
    but for a job that alone outlasts all known work packed perfectly (`drained`): each round of big jobs fills the
    GPUs anyway, so stopping one for another only reorders them, at the cost of a restart; ending together matters
    in the last round. The fewest megabytes stopped, then the soonest stop. Jobs preempted already (finishing their
    epoch) cost nothing more: a GPU they make room on stays the choice while they stop. A job of N GPUs has room
    made on N GPUs of one node at once (one Preemption per GPU with jobs to stop). No job is stopped to save a wait
    under RESTART_S (its restart would cost more), nor a job that has resumed already (queued again or moved): with
    restarts that cost, two jobs that gave way to each other in turn would otherwise never end."""
    last = max((r.expected_end for r in running if r.expected_end is not None), default=now)
    taken: set[tuple[str, int]] = set()
    chosen = []
    for job in sorted(critical, key=lambda p: (-(p.duration_s or 0), p.id)):
        wait = waiting.get(job.id)
        if job.duration_s is None or wait is None or wait.kind not in ("memory", "held"):
            continue
        start = wait.estimated_start
        if (
            start is None
            or start - now < max(PREEMPT_WAIT * job.duration_s, RESTART_S)
            or start + job.duration_s <= last
        ):
            continue
        best: tuple[tuple[int, float], list[Preemption], list[Preemption], list[RunningJob]] | None = None
        keep = keep_mb if now + job.duration_s < drained else None
        for name, node in cluster.nodes.items():
            untaken = [(name, gpu.index) for gpu in node.gpus if (name, gpu.index) not in taken]
            for keys in combinations(untaken, job.gpus):
                found = _room_on(cluster, keys, job, now, cap, taken, keep)
                if found is None:
                    continue
                victims, relocations = found
                fresh = [r for on in victims.values() for r in on if not r.stopping]
                stop = max((r.stop_s or 0.0 for r in fresh), default=0.0)
                cost = (sum(r.vram_mb for r in fresh), stop)
                if stop * PREEMPT_WORTH <= start - now and (best is None or cost < best[0]):
                    rooms = [
                        Preemption(job.id, key[0], key[1], tuple(r.job_id for r in on if r.job_id is not None))
                        for key, on in victims.items()
                    ]
                    best = (cost, rooms, relocations, [r for on in victims.values() for r in on])
        if best is None:
            continue
        _, rooms, relocations, gone = best
        if _deferred(cluster, job, gone, now, cap):
            continue
        chosen += [*rooms, *relocations]
        taken.update((p.node, p.gpu) for p in [*rooms, *relocations])
        stopped = ", ".join(str(i) for p in rooms for i in p.job_ids)
        waiting[job.id] = Wait(
            f"{wait.reason}; stopping jobs {stopped} on {_gpus(rooms[0].node, [p.gpu for p in rooms])} to make room "
            "(they stop at the end of their epoch and resume from its checkpoint)",
            None,
            "preempting",
        )
    return chosen


def _deferred(cluster: Cluster, job: PendingJob, gone: list[RunningJob], now: float, cap: float | None) -> bool:
    """Whether the critical `job` would still wait once the `gone` jobs have stopped, for a GPU rather than
    share one (`sooner_later`): then they would stop for nothing."""
    after = cluster.without(gone, now)
    placement = after.best_fit(job, cap, now, critical=True)
    return placement is None or sooner_later(after, job, placement, now) is not None


def _room_on(
    cluster: Cluster,
    keys: tuple[tuple[str, int], ...],
    job: PendingJob,
    now: float,
    cap: float | None,
    taken: set[tuple[str, int]],
    keep_mb: int | None = None,
) -> tuple[dict[tuple[str, int], list[RunningJob]], list[Preemption]] | None:
    """The running jobs to stop on each of GPUs `keys` (of one node) so that `job` fits on all of them, fewest
    megabytes first per GPU, and the moves of those among them with too much left to be queued again
    (`_preemptible`): each resumes at once on another GPU of the node, not one of `keys`, where it fits within
    the compute cap (so two long jobs of a few GB on two GPUs do not keep a big job off both). Jobs that have resumed
    once, and jobs of over `keep_mb`, are not stopped. None: not there, or nothing to stop."""
    node = keys[0][0]
    room = {k: mb for k, mb in cluster.free.items() if k[0] == node and k not in taken and k not in keys}
    load = {k: cluster.util[k] for k in room}
    victims: dict[tuple[str, int], list[RunningJob]] = {}
    relocations: list[Preemption] = []
    for key in keys:
        free = cluster.free[key]
        on = [r for r in cluster.running if r.node == node and key[1] in r.gpu_indices]
        stopped: list[RunningJob] = []
        for r in sorted(on, key=lambda r: (not r.stopping, -r.vram_mb)):
            if free >= job.vram_mb:
                break
            if not r.stopping and (r.resumed or (keep_mb is not None and r.vram_mb > keep_mb)):
                return None  # kept: it resumed once already, or it is a big job kept while a round of them waits
            if not _preemptible(r, job, now):
                target = _relocation(r, room, load, cap)
                if target is None or r.job_id is None:
                    return None
                room[target] -= r.vram_mb
                load[target] += r.util
                relocations.append(Preemption(r.job_id, target[0], target[1], (r.job_id,)))
            stopped.append(r)
            free += r.vram_mb
        # Those left beside it end within PREEMPT_LEFT of its run time (else it would rather wait than share compute).
        if free < job.vram_mb or not all(_ends_soon(r, job, now) for r in on if r not in stopped):
            return None
        if stopped:
            victims[key] = stopped
    return (victims, relocations) if victims else None


def _relocation(
    victim: RunningJob, room: dict[tuple[str, int], int], load: dict[tuple[str, int], float], cap: float | None
) -> tuple[str, int] | None:
    """The least loaded GPU where a checkpointed single-GPU job fits now, within the compute cap (a job
    stopping already never gets here: it is `_preemptible`)."""
    if victim.stop_s is None or len(victim.gpu_indices) != 1:
        return None
    fits = [k for k in room if room[k] >= victim.vram_mb and (cap is None or load[k] + victim.util <= cap)]
    return min(fits, key=lambda k: (load[k], -room[k]), default=None)


def _preemptible(victim: RunningJob, job: PendingJob, now: float) -> bool:
    return victim.stopping or (
        victim.stop_s is not None
        and victim.job_id is not None
        and len(victim.gpu_indices) == 1
        and _ends_soon(victim, job, now)
    )


def _ends_soon(running: RunningJob, job: PendingJob, now: float) -> bool:
    """Whether the running job ends (or stops) within PREEMPT_LEFT of `job`'s run time."""
    assert job.duration_s is not None
    return running.stopping or (
        running.expected_end is not None and running.expected_end - now < PREEMPT_LEFT * job.duration_s
    )


def _room_being_made(cluster: Cluster, reservation: Reservation) -> str:
    """What the room made for the reservation's job still waits for: the jobs stopping on its GPUs ("" if none)."""
    gpus = set(reservation.gpus)
    stopping = [r for r in cluster.running if r.stopping and r.node == reservation.node and gpus & set(r.gpu_indices)]
    if not stopping:
        return ""
    ids = ", ".join(str(r.job_id) for r in stopping)
    on = _gpus(reservation.node, sorted(gpus & {i for r in stopping for i in r.gpu_indices}))
    return f"; jobs {ids} on {on} stop at the end of their epoch to make room for it"


def _gpus(node: str, indices: Sequence[int]) -> str:
    """'node-a GPU 1' or 'node-a GPUs 0, 1'."""
    return f"{node} GPU{'s' if len(indices) > 1 else ''} {', '.join(str(i) for i in indices)}"


def _quota_reason(job: PendingJob, counts: list[int], quotas: Quotas) -> str | None:
    running, reserved = counts
    if quotas.running is not None and running >= quotas.running:
        return f"user quota: {quotas.running} running jobs"
    if quotas.reserved_mb is not None and reserved + job.vram_mb * job.gpus > quotas.reserved_mb:
        return f"user quota: {quotas.reserved_mb} MB reserved at once ({reserved} MB now)"
    return None


def _why(cluster: Cluster, job: PendingJob, blocked: str, reservation: Reservation | None, cap: float | None) -> str:
    """Why `job` cannot start now; `blocked` is what best_fit found short (memory, slots, compute, held)."""
    need = f"needs {job.vram_mb} MB" + (f" on each of {job.gpus} GPUs of one node" if job.gpus > 1 else " on one GPU")
    if not cluster.nodes:
        return "no live node"
    if blocked == "memory":
        most, where = max(((free, key) for key, free in cluster.free.items()), default=(0, ("-", 0)))
        return f"{need}; most available now: {most} MB on {where[0]} GPU {where[1]}"
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
