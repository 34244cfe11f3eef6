"""When each queued job may start: the policy replayed on expected ends (like Slurm's `squeue --start`).

From the current state, `schedule` runs again at each moment a running or projected job is expected to end
(its time limit, progress or history), as if nothing new arrived and every job ran exactly its expected
time. A job placed at moment t gets t as its estimate. The replay stops where the future stops being known: once only
jobs of unknown length are left running, the jobs still waiting get no estimate; it also stops after
MAX_STEPS moments or BUDGET_S of work (a long queue: its far end gets no estimate).
"""

import time
from collections.abc import Sequence
from dataclasses import replace

from app.scheduler.policy import schedule
from app.scheduler.state import NodeState, PendingJob, PolicyConfig, RunningJob, UserState

MAX_STEPS = 100  # replayed moments at most
BUDGET_S = 0.25  # and at most this long: a step costs a scheduling decision (~2-8 ms with 1,000 queued)


def forecast(
    pending: Sequence[PendingJob],
    nodes: Sequence[NodeState],
    now: float,
    *,
    config: PolicyConfig,
    running: Sequence[RunningJob] = (),
    users: dict[str, UserState] | None = None,
    max_steps: int = MAX_STEPS,
    budget_s: float = BUDGET_S,
) -> dict[int, float]:
    """Estimated start of each pending job that would start within the replay (placed now: `now`)."""
    deadline = time.perf_counter() + budget_s
    estimates: dict[int, float] = {}
    waiting = list(pending)
    running = list(running)
    users = dict(users or {})
    owners: dict[int, PendingJob] = {}  # id() of a replayed start -> its job, for its user's quota counts
    state = {node.name: node for node in nodes}
    moment = now
    for _ in range(max_steps):
        decision = schedule(waiting, list(state.values()), moment, running=running, users=users, config=config)
        by_id = {job.id: job for job in waiting}
        for placement in decision.placements:
            job = by_id.pop(placement.job_id)
            estimates[job.id] = moment
            end = moment + job.duration_s if job.duration_s is not None else None
            started = RunningJob(placement.node, placement.gpu_indices, job.vram_mb, job.util, end)
            running.append(started)
            owners[id(started)] = job
            state[placement.node] = _charged(state[placement.node], started, +1)
            users[job.user] = _counted(users.get(job.user, UserState()), job, +1)
        waiting = list(by_id.values())
        ends = sorted({job.expected_end for job in running if job.expected_end is not None})
        if not waiting or not ends or time.perf_counter() > deadline:
            break
        later = [end for end in ends if end > moment]
        moment = later[0] if later else moment  # only overdue jobs left: take them as ending now
        ended = [job for job in running if job.expected_end is not None and job.expected_end <= moment]
        running = [job for job in running if job.expected_end is None or job.expected_end > moment]
        for gone in ended:
            if gone.node in state:
                state[gone.node] = _charged(state[gone.node], gone, -1)
            # Jobs running at the start keep their user's quota counts: whose they are is not known here.
            if id(gone) in owners:
                owner = owners.pop(id(gone))
                users[owner.user] = _counted(users[owner.user], owner, -1)
    return estimates


def _counted(user: UserState, job: PendingJob, sign: int) -> UserState:
    return replace(user, running=user.running + sign, reserved_mb=user.reserved_mb + sign * job.vram_mb * job.gpus)


def _charged(node: NodeState, job: RunningJob, sign: int) -> NodeState:
    """`node` with `job` started on it (sign +1) or ended (-1)."""
    gpus = tuple(
        replace(gpu, available_mb=gpu.available_mb - sign * job.vram_mb, util=max(0.0, gpu.util + sign * job.util))
        if gpu.index in job.gpu_indices
        else gpu
        for gpu in node.gpus
    )
    return replace(node, free_slots=node.free_slots - sign, gpus=gpus)
