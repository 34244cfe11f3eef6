"""The dispatch loop: one leader at a time reserves VRAM in SQL, then enqueues ids on the nodes' queues."""

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job as RqJob
from rq.serializers import JSONSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.constants import (
    LEADER_KEY,
    LEADER_TTL_S,
    MAKING_ROOM_KEY,
    MOVING_TO_KEY,
    REENQUEUE_AFTER_S,
    RUN_HEARTBEAT_KEY,
    RUN_HEARTBEAT_TTL_S,
    RUN_PREEMPT_KEY,
    RUN_PREEMPT_TTL_S,
    SCHEDULER_WAKE_KEY,
    node_queue,
    rq_job_id,
)
from app.db.models import Job, utcnow
from app.db.session import lock_ledger, transaction
from app.enums import FailureReason, JobStatus
from app.scheduler import inputs
from app.scheduler.forecast import forecast
from app.scheduler.ledger import active_jobs, node_states, reservations_of, running_attempts
from app.scheduler.policy import schedule
from app.scheduler.state import Placement, PolicyConfig, Preemption, Quotas, Wait
from app.services import progress, transitions
from app.services.nodes import NodeSnapshot, live_nodes
from app.services.waiting import publish_waiting

log = logging.getLogger(__name__)

TASK = "worker.task.run_job"  # by name: the control plane never imports worker code
FORECAST_EVERY_S = 10.0  # how often the estimated starts of all queued jobs are replayed (forecast.py)
FORECAST_NEW_JOB_S = 1.0  # sooner for a job queued since: its submitter looks now (a burst: once a second)


class LeaderLock:
    """A Redis lock with expiry; the holder renews it every tick (invariant 5)."""

    _RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.token = uuid.uuid4().hex
        self.ttl_ms = int(LEADER_TTL_S * 1000)

    def acquire_or_renew(self) -> bool:
        if self.redis.eval(self._RENEW, 1, LEADER_KEY, self.token, self.ttl_ms):  # type: ignore[no-untyped-call]
            return True
        return bool(self.redis.set(LEADER_KEY, self.token, nx=True, px=self.ttl_ms))

    def release(self) -> None:
        self.redis.eval(  # type: ignore[no-untyped-call]
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
            1,
            LEADER_KEY,
            self.token,
        )


class Scheduler:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], redis: Redis) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = redis
        self.lock = LeaderLock(redis)
        self.config = PolicyConfig(
            quotas=Quotas(running=settings.quota_running, reserved_mb=settings.quota_reserved_mb)
        )
        self.estimates: dict[int, float] = {}  # the latest forecast (forecast.py): job id -> start
        self.forecast_ids: set[int] = set()  # the jobs waiting at the latest forecast
        self.forecast_at = float("-inf")
        self.forecast_every_s = FORECAST_EVERY_S
        self.forecast_new_job_s = FORECAST_NEW_JOB_S

    @property
    def making_room(self) -> set[int]:
        """Jobs that preempted others or were moved (policy.schedule), not placed since: in Redis, so that a
        new leader places them first too."""
        return {int(raw) for raw in self.redis.smembers(MAKING_ROOM_KEY)}

    @property
    def moving_to(self) -> dict[int, tuple[str, int]]:
        """Of those, each moved job's (node, GPU) where it was moved to (policy.schedule's moving_to)."""
        return {int(job_id): tuple(json.loads(raw)) for job_id, raw in self.redis.hgetall(MOVING_TO_KEY).items()}

    def _keep_making_room(
        self, ids: set[int], moving: dict[int, tuple[str, int]], before: tuple[set[int], dict[int, tuple[str, int]]]
    ) -> None:
        if (ids, moving) == before:
            return
        with self.redis.pipeline() as pipe:
            pipe.delete(MAKING_ROOM_KEY, MOVING_TO_KEY)
            if ids:
                pipe.sadd(MAKING_ROOM_KEY, *ids)
            if moving:
                pipe.hset(MOVING_TO_KEY, mapping={job_id: json.dumps(to) for job_id, to in moving.items()})
            pipe.execute()

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except RedisError as exc:
                    log.warning("Redis unavailable, retrying: %s", exc)
                except Exception:
                    log.exception("scheduler tick failed")
                self._pause(stop)
        finally:
            with contextlib.suppress(RedisError):
                self.lock.release()

    def _pause(self, stop: threading.Event) -> None:
        """Until the next tick, or sooner when the API signals a submission."""
        try:
            self.redis.blpop([SCHEDULER_WAKE_KEY], timeout=self.settings.dispatch_interval_s)
        except RedisError:
            stop.wait(self.settings.dispatch_interval_s)

    def tick(self) -> list[Placement]:
        if not self.lock.acquire_or_renew():
            return []
        nodes = live_nodes(self.redis)
        self.reconcile(nodes)
        return self.dispatch(nodes)

    def dispatch(self, nodes: list[NodeSnapshot]) -> list[Placement]:
        """Check and write the ledger in one transaction, then enqueue; a lost enqueue is redone by reconcile.
        Why each other queued job waits goes to Redis for the API to show."""
        now = utcnow()
        with transaction(self.sessions) as session:
            lock_ledger(session)
            queued = session.scalars(select(Job).where(Job.status == JobStatus.QUEUED)).all()
            if not queued:
                publish_waiting(self.redis, {})
                return []
            active = active_jobs(session)
            reports, loads, stopping = progress.read(self.redis, running_attempts(active))
            history = inputs.History.of(session, [*queued, *active], loads)
            running = inputs.running_jobs(active, history, now, reports, loads, stopping)
            preempted = [job.id for job in queued if job.failure_reason is FailureReason.PREEMPTED]
            pending = inputs.pending_jobs(queued, history, progress.resume_left(self.redis, preempted))
            states = node_states(nodes, reservations_of(active), self.settings.safety_margin_mb, running)
            users = inputs.user_states(session, active, now, self.settings.fair_share_half_life_h * 3600)
            # A moved job stays while it finishes its epoch, to be placed first once queued again.
            before = self.making_room
            making_room = before & {job.id for job in [*queued, *active]}
            moved_to = self.moving_to
            moving_to = {job_id: to for job_id, to in moved_to.items() if job_id in making_room}
            decision = schedule(
                pending,
                states,
                now.timestamp(),
                running=running,
                users=users,
                config=self.config,
                making_room=making_room,
                moving_to=moving_to,
            )
            by_id = {job.id: job for job in queued}
            placements = [
                p
                for p in decision.placements
                if transitions.dispatch(session, by_id[p.job_id], p.node, list(p.gpu_indices))
            ]
        for placement in placements:
            self._enqueue(placement.node, placement.job_id, by_id[placement.job_id].attempt)
        self._preempt(decision.preemptions, active)
        making_room -= {placement.job_id for placement in placements}
        moving_to = {job_id: to for job_id, to in moving_to.items() if job_id in making_room}
        moving_to |= {p.for_job: (p.node, p.gpu) for p in decision.preemptions if p.move}
        self._keep_making_room(making_room | {p.for_job for p in decision.preemptions}, moving_to, (before, moved_to))
        moment = now.timestamp()
        since = moment - self.forecast_at
        arrived = any(job_id not in self.forecast_ids for job_id in decision.waiting)
        if since >= self.forecast_every_s or (arrived and since >= self.forecast_new_job_s):  # outside the lock
            self.forecast_at, self.forecast_ids = moment, set(decision.waiting)
            try:
                self.estimates = forecast(pending, states, moment, config=self.config, running=running, users=users)
            except Exception:  # an estimate is a courtesy: the reasons must still be published
                log.exception("forecast of estimated starts failed")
        publish_waiting(self.redis, self._with_estimates(decision.waiting, moment))
        return placements

    def _preempt(self, preemptions: list[Preemption], active: Sequence[Job]) -> None:
        """Ask the workers of the running jobs the policy preempts to stop them (the policy names them each tick
        until they have: a flag already set stays as it is); each is then queued again by its worker."""
        attempts = {job.id: job.attempt for job in active}
        # What each stop is for, as the flag's value: the worker writes it in the job's log. A job stopped for a
        # critical one may also move (policy._room_on): making room is what it is for.
        rooms = {job_id: p.for_job for p in preemptions if not p.move for job_id in p.job_ids}
        why = {
            job_id: f"to make room for job {rooms[job_id]}, which would otherwise end last"
            if job_id in rooms
            else f"to move to {p.node} GPU {p.gpu}, where it ends sooner"
            for p in preemptions
            for job_id in p.job_ids
            if job_id in attempts
        }
        if why:
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id, reason in why.items():
                    key = RUN_PREEMPT_KEY.format(job_id=job_id, attempt=attempts[job_id])
                    pipe.set(key, reason, ex=RUN_PREEMPT_TTL_S, nx=True)
                new = [job_id for job_id, set_now in zip(why, pipe.execute(), strict=True) if set_now]
            moving = {p.for_job: p for p in preemptions if p.move and p.for_job not in rooms}
            for job_id in new:
                if job_id in moving:
                    to = moving[job_id]
                    log.info("moving job %s to %s GPU %s, where it ends sooner", job_id, to.node, to.gpu)
            if stopped := [job_id for job_id in new if job_id not in moving]:
                log.info("preempting jobs %s", ", ".join(map(str, stopped)))

    def _with_estimates(self, waiting: dict[int, Wait], now: float) -> dict[int, Wait]:
        """The policy's estimate where it gives one (the reserved job), else the forecast's while it is
        still ahead (a passed one is dropped until the next forecast)."""
        shown = {}
        for job_id, wait in waiting.items():
            estimate = self.estimates.get(job_id)
            if wait.estimated_start is None and estimate is not None and estimate > now:
                wait = replace(wait, estimated_start=estimate)
            shown[job_id] = wait
        return shown

    def _enqueue(self, node: str, job_id: int, attempt: int) -> None:
        queue = Queue(node_queue(node), connection=self.redis, serializer=JSONSerializer)
        queue.enqueue_call(
            TASK,
            args=(job_id, attempt),
            job_id=rq_job_id(job_id, attempt),
            timeout=-1,
            result_ttl=3600,
            failure_ttl=24 * 3600,
        )

    def reconcile(self, nodes: list[NodeSnapshot]) -> None:
        """Jobs whose node or worker died become lost (retried or failed); dispatched jobs whose message
        Redis lost are enqueued again (SQL is the source of truth, invariant 3)."""
        alive = {snap.node for snap in nodes}
        now = utcnow()
        grace = timedelta(seconds=RUN_HEARTBEAT_TTL_S)
        reenqueue_after = timedelta(seconds=REENQUEUE_AFTER_S)
        with self.sessions() as session:
            active = active_jobs(session)
        for job in active:
            since = job.started_at or job.dispatched_at or now
            if job.status is JobStatus.RUNNING:
                beating = self.redis.exists(RUN_HEARTBEAT_KEY.format(job_id=job.id, attempt=job.attempt))
                if not beating and now - since > grace:
                    self._lose(job, "its worker stopped sending heartbeats")
            elif job.node not in alive and now - since > grace:
                self._lose(job, f"node {job.node} is gone")
            elif now - since > reenqueue_after and not self._message_exists(job):
                log.warning("job %s: its queue message is missing; enqueueing it again", job.id)
                self._enqueue(job.node or "", job.id, job.attempt)

    def _message_exists(self, job: Job) -> bool:
        return bool(RqJob.exists(rq_job_id(job.id, job.attempt), connection=self.redis))

    def _lose(self, job: Job, why: str) -> None:
        with transaction(self.sessions) as session:
            reached = transitions.finish(session, job, job.attempt, JobStatus.FAILED, reason=FailureReason.LOST)
        if reached is not None:
            log.warning("job %s attempt %s lost (%s): now %s", job.id, job.attempt, why, reached)
