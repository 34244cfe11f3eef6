"""Transitions, the ledger and the dispatch loop against real SQL and Redis (no node processes)."""

import logging
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.constants import RUN_HEARTBEAT_KEY, RUN_PREEMPT_KEY, node_queue
from app.db.models import Job, Run, utcnow
from app.db.session import transaction
from app.enums import FailureReason, JobStatus
from app.errors import IllegalTransition
from app.scheduler import inputs
from app.scheduler.loop import LeaderLock, Scheduler
from app.scheduler.state import Preemption, Quotas
from app.services import progress, transitions
from app.services.progress import Progress
from app.services.waiting import waiting_of
from tests.factories import make_job, past_runs
from tests.test_api import publish_node


def reload(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_illegal_transitions_are_refused(sessions: sessionmaker[Session]) -> None:
    job = make_job(sessions)
    with transaction(sessions) as session, pytest.raises(IllegalTransition):
        transitions.move(session, job.id, [JobStatus.QUEUED], JobStatus.SUCCEEDED)
    with transaction(sessions) as session, pytest.raises(IllegalTransition):
        transitions.move(session, job.id, [JobStatus.SUCCEEDED], JobStatus.QUEUED)


def test_an_attempt_ends_and_releases_exactly_once(sessions: sessionmaker[Session]) -> None:
    job = make_job(sessions)
    with transaction(sessions) as session:
        assert transitions.dispatch(session, job, "node-a", [0])
    with transaction(sessions) as session:
        assert transitions.start(session, job.id, 1, pid=123, log_path="/l", output_dir="/o")

    with transaction(sessions) as session:
        first = transitions.finish(session, job, 1, JobStatus.SUCCEEDED, exit_code=0)
    with transaction(sessions) as session:
        second = transitions.finish(session, job, 1, JobStatus.FAILED, reason=FailureReason.LOST)

    assert (first, second) == (JobStatus.SUCCEEDED, None)
    assert reload(sessions, job.id).status is JobStatus.SUCCEEDED
    with sessions() as session:
        [run] = session.scalars(select(Run)).all()
        assert run.outcome is JobStatus.SUCCEEDED and run.released_at is not None


def test_a_failure_the_job_retries_on_is_queued_again(sessions: sessionmaker[Session]) -> None:
    job = make_job(sessions, max_retries=1, retry_on=["error"])
    for attempt in (1, 2):
        with transaction(sessions) as session:
            assert transitions.dispatch(session, reload(sessions, job.id), "node-a", [0])
        with transaction(sessions) as session:
            reached = transitions.finish(session, job, attempt, JobStatus.FAILED, reason=FailureReason.ERROR)
        assert reached is (JobStatus.QUEUED if attempt == 1 else JobStatus.FAILED)

    final = reload(sessions, job.id)
    assert (final.status, final.attempt, final.failure_reason) == (JobStatus.FAILED, 2, FailureReason.ERROR)


def test_only_one_lock_holder_leads(redis: Redis) -> None:
    first, second = LeaderLock(redis), LeaderLock(redis)

    assert first.acquire_or_renew()
    assert not second.acquire_or_renew()
    assert first.acquire_or_renew()  # renewal
    first.release()
    assert second.acquire_or_renew()


@pytest.fixture
def scheduler(settings: Settings, sessions: sessionmaker[Session], redis: Redis) -> Scheduler:
    return Scheduler(settings, sessions, redis)


def test_dispatch_reserves_in_sql_and_enqueues_the_id(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis
) -> None:
    publish_node(redis, sizes=(8192,))
    jobs = [make_job(sessions, vram_mb=5000) for _ in range(2)]

    placements = scheduler.tick()

    assert [p.job_id for p in placements] == [jobs[0].id]
    assert reload(sessions, jobs[0].id).status is JobStatus.DISPATCHED
    assert reload(sessions, jobs[1].id).status is JobStatus.QUEUED
    [message] = Queue(node_queue("node-a"), connection=redis, serializer=JSONSerializer).get_jobs()
    assert message.func_name == "worker.task.run_job" and message.args == [jobs[0].id, 1]
    assert scheduler.tick() == []  # nothing more fits until the first is released


def test_a_failing_forecast_still_leaves_every_reason_published(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> dict[int, float]:
        raise RuntimeError("a bug in the forecast")

    monkeypatch.setattr("app.scheduler.loop.forecast", broken)
    publish_node(redis, sizes=(8192,))
    first, second = make_job(sessions, vram_mb=5000), make_job(sessions, vram_mb=5000)

    assert [p.job_id for p in scheduler.tick()] == [first.id]
    [(reason, start)] = waiting_of(redis, [second.id]).values()
    assert reason.startswith("needs 5000 MB on one GPU") and start is None


def test_a_second_scheduler_does_not_dispatch(
    settings: Settings, sessions: sessionmaker[Session], redis: Redis
) -> None:
    publish_node(redis)
    make_job(sessions)
    leader, follower = Scheduler(settings, sessions, redis), Scheduler(settings, sessions, redis)

    assert len(leader.tick()) == 1
    make_job(sessions)
    assert follower.tick() == []


def test_dispatch_respects_foreign_memory(scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis) -> None:
    publish_node(redis, sizes=(8192,), foreign=4000)
    job = make_job(sessions, vram_mb=5000)

    assert scheduler.tick() == []
    publish_node(redis, sizes=(8192,), foreign=0)
    assert [p.job_id for p in scheduler.tick()] == [job.id]


def started_five_minutes_ago(sessions: sessionmaker[Session], job_id: int) -> None:
    with transaction(sessions) as session:
        transitions.start(session, job_id, 1, pid=1, log_path="/l", output_dir="/o")
        session.execute(update(Job).where(Job.id == job_id).values(started_at=utcnow() - timedelta(minutes=5)))


def test_running_job_without_heartbeat_is_lost_and_retried(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis
) -> None:
    publish_node(redis)
    job = make_job(sessions, max_retries=1)
    scheduler.tick()
    started_five_minutes_ago(sessions, job.id)

    scheduler.tick()

    requeued = reload(sessions, job.id)
    assert (requeued.attempt, requeued.failure_reason) == (2, FailureReason.LOST)
    assert requeued.status in (JobStatus.QUEUED, JobStatus.DISPATCHED)  # the same tick may dispatch it again


def test_running_job_with_heartbeat_is_left_alone(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis
) -> None:
    publish_node(redis)
    job = make_job(sessions)
    scheduler.tick()
    started_five_minutes_ago(sessions, job.id)
    redis.set(RUN_HEARTBEAT_KEY.format(job_id=job.id, attempt=1), "node-a", ex=10)

    scheduler.tick()

    assert reload(sessions, job.id).status is JobStatus.RUNNING


def test_redis_losing_its_data_loses_no_job(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis
) -> None:
    publish_node(redis)
    job = make_job(sessions)
    scheduler.tick()
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job.id).values(dispatched_at=utcnow() - timedelta(minutes=1)))
    redis.flushdb()  # Redis restarted without persistence
    publish_node(redis)

    scheduler.tick()

    [message] = Queue(node_queue("node-a"), connection=redis, serializer=JSONSerializer).get_jobs()
    assert message.args == [job.id, 1]


def test_jobs_on_a_dead_node_are_lost(scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis) -> None:
    publish_node(redis)
    job = make_job(sessions)
    scheduler.tick()
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job.id).values(dispatched_at=utcnow() - timedelta(minutes=1)))
    redis.delete("vramq:node:node-a")

    scheduler.tick()

    gone = reload(sessions, job.id)
    assert (gone.status, gone.failure_reason) == (JobStatus.FAILED, FailureReason.LOST)


def test_without_a_time_limit_a_queued_job_is_expected_to_run_as_long_as_its_history(
    sessions: sessionmaker[Session],
) -> None:
    past_runs(sessions, "fp", 100, 300, 200, outcome=JobStatus.SUCCEEDED)
    past_runs(sessions, "fp", 9000, outcome=JobStatus.FAILED)  # a failed run says nothing about the run time
    jobs = [make_job(sessions, fingerprint="fp"), make_job(sessions, fingerprint="fp", time_limit_s=60)]
    jobs.append(make_job(sessions, fingerprint="new"))

    with sessions() as session:
        queued = session.scalars(select(Job).where(Job.id.in_([j.id for j in jobs])).order_by(Job.id)).all()
        pending = inputs.pending_jobs(queued, inputs.History.of(session, queued))

    assert [p.duration_s for p in pending] == [200.0, 60.0, None]  # the median; a time limit wins; unknown
    assert [p.duration_is_limit for p in pending] == [False, True, False]  # only the limit is an upper bound


@pytest.mark.parametrize(
    ("started_ago", "time_limit_s", "expected_wait"),
    [(50, None, 200), (500, None, None), (50, 1000, 1000)],
    ids=["by-history", "past-its-history", "by-time-limit"],
)
def test_a_running_jobs_history_dates_the_job_waiting_for_it(
    scheduler: Scheduler,
    sessions: sessionmaker[Session],
    redis: Redis,
    started_ago: float,
    time_limit_s: int | None,
    expected_wait: float | None,
) -> None:
    """The job holding the GPU ends after its fingerprint's median run time (200 s), unless it has
    already run longer (then nobody knows) or has a time limit (a promise, kept over history)."""
    scheduler.forecast_every_s = 0  # every tick: no estimate kept from the first
    publish_node(redis, sizes=(8192,))
    past_runs(sessions, "fp", 100, 300, 200, outcome=JobStatus.SUCCEEDED)
    holder = make_job(sessions, vram_mb=5000, fingerprint="fp", time_limit_s=time_limit_s)
    waiting = make_job(sessions, vram_mb=5000)
    scheduler.tick()
    started = utcnow() - timedelta(seconds=started_ago)
    with transaction(sessions) as session:
        transitions.start(session, holder.id, 1, pid=1, log_path="/l", output_dir="/o")
        session.execute(update(Job).where(Job.id == holder.id).values(started_at=started))
    redis.set(RUN_HEARTBEAT_KEY.format(job_id=holder.id, attempt=1), "node-a", ex=10)

    scheduler.tick()

    [(reason, start)] = waiting_of(redis, [waiting.id]).values()
    assert reason.startswith("needs 5000 MB on one GPU")
    if expected_wait is None:
        assert start is None
    else:
        assert start is not None
        assert start.timestamp() == pytest.approx(started.timestamp() + expected_wait, abs=0.01)


def test_a_newly_queued_job_is_forecast_without_waiting_for_the_next_round(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis
) -> None:
    """All estimates are replayed every 10 s, and sooner (here: at once) when a job has arrived since."""
    scheduler.forecast_new_job_s = 0
    publish_node(redis, sizes=(8192,))
    make_job(sessions, vram_mb=5000, time_limit_s=100)
    first = make_job(sessions, vram_mb=5000, time_limit_s=100)
    scheduler.tick()
    second = make_job(sessions, vram_mb=5000)

    scheduler.tick()

    estimates = waiting_of(redis, [first.id, second.id])
    first_start, second_start = estimates[first.id][1], estimates[second.id][1]
    assert first_start is not None and second_start is not None
    assert (second_start - first_start).total_seconds() == pytest.approx(100, abs=0.01)


def run_with_progress(
    sessions: sessionmaker[Session], redis: Redis, job_id: int, started: datetime, report: Progress
) -> None:
    """The dispatched job's first attempt started at `started`, beats, and its autolog reports `report`."""
    with transaction(sessions) as session:
        transitions.start(session, job_id, 1, pid=1, log_path="/l", output_dir="/o")
        session.execute(update(Job).where(Job.id == job_id).values(started_at=started))
    redis.set(RUN_HEARTBEAT_KEY.format(job_id=job_id, attempt=1), "node-a", ex=10)
    progress.publish(redis, job_id, 1, report)


def run_checkpointed(sessions: sessionmaker[Session], redis: Redis, jobs: list[Job]) -> None:
    """Each dispatched job's first attempt started 1200 s ago, and its first epoch (1000 s) is checkpointed."""
    started = utcnow() - timedelta(seconds=1200)
    began = started.timestamp() + 20
    for job in jobs:
        report = Progress(done=1, total=10, start=0, began=began, at=began + 1000)
        run_with_progress(sessions, redis, job.id, started, report)


def test_a_running_jobs_training_progress_dates_its_end_before_its_time_limit(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis
) -> None:
    """Resumed at epoch 1 of 10, its fit began 20 s after the start and had 3 epochs done 100 s after it:
    40 s an epoch, so the 7 left end 380 s after its start, well before its 1,000 s time limit."""
    scheduler.forecast_every_s = 0
    publish_node(redis, sizes=(8192,))
    holder = make_job(sessions, vram_mb=5000, time_limit_s=1000)
    waiting = make_job(sessions, vram_mb=5000)
    scheduler.tick()
    started = utcnow() - timedelta(seconds=120)
    began, at = started.timestamp() + 20, started.timestamp() + 100
    run_with_progress(sessions, redis, holder.id, started, Progress(done=3, total=10, start=1, began=began, at=at))

    scheduler.tick()

    [(_, start)] = waiting_of(redis, [waiting.id]).values()
    assert start is not None
    assert start.timestamp() == pytest.approx(started.timestamp() + 380, abs=0.01)


@pytest.mark.parametrize(("measured", "placed"), [(None, True), (0.95, False)])
def test_a_running_jobs_measured_load_outweighs_its_history(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis, measured: float | None, placed: bool
) -> None:
    """A holder that history says is light (0.3) leaves room for a 0.9 job under the cap of 1.7; measured
    at 0.95 while it runs, it does not."""
    publish_node(redis, sizes=(24576,))
    past_runs(sessions, "light", 100, outcome=JobStatus.SUCCEEDED, util=0.3)
    past_runs(sessions, "heavy", 100, outcome=JobStatus.SUCCEEDED, util=0.9)
    holder = make_job(sessions, vram_mb=5000, fingerprint="light")
    scheduler.tick()
    with transaction(sessions) as session:
        transitions.start(session, holder.id, 1, pid=1, log_path="/l", output_dir="/o")
    redis.set(RUN_HEARTBEAT_KEY.format(job_id=holder.id, attempt=1), "node-a", ex=10)
    if measured is not None:
        progress.publish_load(redis, holder.id, 1, measured)
    heavy = make_job(sessions, vram_mb=5000, fingerprint="heavy")

    scheduler.tick()

    assert (reload(sessions, heavy.id).status is JobStatus.DISPATCHED) is placed
    if not placed:
        [(reason, _)] = waiting_of(redis, [heavy.id]).values()
        assert reason.endswith("compute-saturated (it would take them past 1.7)")


@pytest.mark.parametrize(("fingerprint", "placed"), [("sweep", False), ("other", True)])
def test_a_queued_job_without_history_takes_the_load_measured_on_its_running_siblings(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis, fingerprint: str, placed: bool
) -> None:
    """No run of the sweep has finished, but its first job runs at a measured 0.95: its next job is
    expected as busy and waits rather than take the GPU to 1.9. A job of an unknown fingerprint is still
    expected at 0.5, and 1.45 is under the cap."""
    publish_node(redis, sizes=(24576,))
    first = make_job(sessions, vram_mb=5000, fingerprint="sweep")
    scheduler.tick()
    with transaction(sessions) as session:
        transitions.start(session, first.id, 1, pid=1, log_path="/l", output_dir="/o")
    redis.set(RUN_HEARTBEAT_KEY.format(job_id=first.id, attempt=1), "node-a", ex=10)
    progress.publish_load(redis, first.id, 1, 0.95)
    queued = make_job(sessions, vram_mb=5000, fingerprint=fingerprint)

    scheduler.tick()

    assert (reload(sessions, queued.id).status is JobStatus.DISPATCHED) is placed
    if not placed:
        [(reason, _)] = waiting_of(redis, [queued.id]).values()
        assert reason.endswith("compute-saturated (it would take them past 1.7)")


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (Progress(done=3, total=10, start=1, began=1020, at=1100), 1380),  # 40 s an epoch; start-up once
        (Progress(done=10, total=10, start=0, began=1000, at=1300), 1300),  # done: it ended with its last epoch
        (Progress(done=2, total=10, start=2, began=1050, at=1100), None),  # resumed, no epoch of its own yet
        (Progress(done=3, total=10, start=1, began=800, at=900), None),  # written before this attempt started
        (Progress(done=12, total=10, start=1, began=1020, at=1100), None),  # more than planned: says nothing
    ],
)
def test_progress_dates_the_end_at_the_fits_pace(report: Progress, expected: float | None) -> None:
    assert report.expected_end(started=1000) == expected


def test_a_job_queued_again_after_a_preemption_is_planned_on_what_its_pace_left(
    sessions: sessionmaker[Session],
) -> None:
    """Its stopped attempt reported 500 s of epochs left (progress.keep_left): the policy plans its next attempt
    on that, not on the 1,000 s time limit; a job queued again for another reason keeps its limit."""
    preempted = make_job(sessions, vram_mb=1000, time_limit_s=1000)
    other = make_job(sessions, vram_mb=1000, time_limit_s=1000)
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == preempted.id).values(failure_reason=FailureReason.PREEMPTED))
        session.execute(update(Job).where(Job.id == other.id).values(failure_reason=FailureReason.OOM))
        queued = session.scalars(select(Job).order_by(Job.id)).all()
        left = {preempted.id: 500.0, other.id: 500.0}
        pending = inputs.pending_jobs(queued, inputs.History({}, {}), left)

    assert [(p.duration_s, p.duration_is_limit) for p in pending] == [(500.0, False), (1000.0, True)]


@pytest.mark.parametrize(("done", "start"), [(1, 0), (3, 2)])
def test_the_scheduler_asks_the_worker_to_stop_a_job_the_policy_preempts(
    scheduler: Scheduler,
    sessions: sessionmaker[Session],
    redis: Redis,
    done: int,
    start: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 13000 MB job holds GPU 0 and a 12000 MB one GPU 1; the second has a checkpoint (an epoch done, or
    resumed at epoch 2 from an earlier attempt's and one more done since: its pace tells when it stops) and
    ends by its time limit in about 8800 s. A 22000 MB job with a 100000 s limit would wait for it, then end
    long after it: its worker is asked to stop it. The other, without a checkpoint, is not."""
    publish_node(redis, sizes=(24576, 24576))
    other = make_job(sessions, vram_mb=13000)
    scheduler.tick()
    small = make_job(sessions, vram_mb=12000, time_limit_s=10000)
    scheduler.tick()
    started = utcnow() - timedelta(seconds=1200)
    began = started.timestamp() + 20
    report = Progress(done=done, total=10, start=start, began=began, at=began + 1000 * (done - start))
    run_with_progress(sessions, redis, small.id, started, report)
    big = make_job(sessions, vram_mb=22000, time_limit_s=100000)

    with caplog.at_level(logging.INFO, logger="app.scheduler.loop"):
        scheduler.tick()

    assert reload(sessions, other.id).gpu_indices == [0] and reload(sessions, small.id).gpu_indices == [1]
    # The flag says what the stop is for: the worker writes it in the job's log.
    assert redis.get(RUN_PREEMPT_KEY.format(job_id=small.id, attempt=1)) == (
        f"to make room for job {big.id}, which would otherwise end last".encode()
    )
    assert not redis.exists(RUN_PREEMPT_KEY.format(job_id=other.id, attempt=1))
    [(reason, _)] = waiting_of(redis, [big.id]).values()
    assert f"stopping jobs {small.id} on node-a GPU 1" in reason
    assert f"preempting jobs {small.id}" in caplog.text
    assert scheduler.making_room == {big.id}  # considered first until placed, to get the room made for it
    # While it finishes its epoch the policy names it again each tick: the flag stays, the log says it once.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="app.scheduler.loop"):
        scheduler.tick()
    assert redis.exists(RUN_PREEMPT_KEY.format(job_id=small.id, attempt=1))
    assert "preempting" not in caplog.text


def test_the_scheduler_makes_room_on_both_gpus_for_a_big_job_of_two(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis
) -> None:
    """A 13000 MB and a 12000 MB job hold a GPU each, both checkpointed and ending by their time limits in
    about 8800 s. A job of 2 x 22000 MB with a 100000 s limit would wait for both: both are asked to stop."""
    publish_node(redis, sizes=(24576, 24576))
    small = []
    for vram_mb in (13000, 12000):
        small.append(make_job(sessions, vram_mb=vram_mb, time_limit_s=10000))
        scheduler.tick()
    run_checkpointed(sessions, redis, small)
    big = make_job(sessions, vram_mb=22000, gpus=2, time_limit_s=100000)

    scheduler.tick()

    assert [reload(sessions, job.id).gpu_indices for job in small] == [[0], [1]]
    for job in small:
        flag = redis.get(RUN_PREEMPT_KEY.format(job_id=job.id, attempt=1))
        assert flag == f"to make room for job {big.id}, which would otherwise end last".encode()
    [(reason, _)] = waiting_of(redis, [big.id]).values()
    assert f"stopping jobs {small[0].id}, {small[1].id} on node-a GPUs 0, 1" in reason
    assert scheduler.making_room == {big.id}


def test_the_room_made_for_a_job_is_kept_for_it_while_its_last_jobs_stop(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis
) -> None:
    """A 6000 MB job checkpointed each 1000 s holds GPU 0, and a 20000 MB one without checkpoints GPU 1. A
    20000 MB job of 100000 s stops the first to take GPU 0. While that job finishes its epoch (820 s to go), a
    queued one-hour 6000 MB job does not slip into GPU 0: planned on the stopping job's full run (8820 s), it
    would have looked done in time, and held the room for an hour. The big job's reason says what it waits for."""
    publish_node(redis, sizes=(24576, 24576))
    stopping = make_job(sessions, vram_mb=6000, time_limit_s=100000)
    scheduler.tick()
    other = make_job(sessions, vram_mb=20000, time_limit_s=100000)
    scheduler.tick()
    run_checkpointed(sessions, redis, [stopping])
    run_with_progress(
        sessions, redis, other.id, utcnow(), Progress(0, 10, 0, utcnow().timestamp(), utcnow().timestamp())
    )
    big = make_job(sessions, vram_mb=20000, time_limit_s=100000)
    scheduler.tick()
    assert redis.exists(RUN_PREEMPT_KEY.format(job_id=stopping.id, attempt=1))
    short = make_job(sessions, vram_mb=6000, time_limit_s=3600)

    scheduler.tick()

    assert reload(sessions, short.id).status is JobStatus.QUEUED
    waiting = waiting_of(redis, [big.id, short.id])
    reason, start = waiting[big.id]
    assert reason.endswith(f"; jobs {stopping.id} on node-a GPU 0 stop at the end of their epoch to make room for it")
    assert start is not None and start - utcnow() < timedelta(seconds=900)
    assert f"held for job {big.id}" in waiting[short.id][0]


@pytest.mark.parametrize(
    ("stopping", "now", "expected"),
    [
        (False, 1500.0, 10100.0),  # 9 epochs of 1000 s left after the one that ended at 1100
        (True, 1500.0, 2100.0),  # preempted: it stops at the end of the epoch under way
        (True, 2500.0, 2500.0),  # that epoch runs late: it stops any moment
    ],
)
def test_a_preempted_job_is_expected_to_stop_at_the_end_of_its_epoch(
    stopping: bool, now: float, expected: float
) -> None:
    epoch = datetime(2026, 1, 1)
    job = Job(id=7, status=JobStatus.RUNNING, vram_mb=1000, started_at=epoch, time_limit_s=50000)
    report = Progress(done=1, total=10, start=0, began=epoch.timestamp() + 100, at=epoch.timestamp() + 1100)
    at = epoch + timedelta(seconds=now)

    [running] = inputs.running_jobs(
        [job], inputs.History({}, {}), at, progress={7: report}, stopping={7} if stopping else set()
    )

    assert (running.expected_end or 0) - epoch.timestamp() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("status", "done", "start", "at", "stop"),
    [
        (JobStatus.RUNNING, 3, 1, 900.0, 100.0),  # 2 epochs from 500 to 900: the one under way ends at 1100
        (JobStatus.RUNNING, 3, 1, 700.0, 0.0),  # the one under way should have ended at 800: it stops at once
        (JobStatus.RUNNING, 2, 2, 500.0, None),  # resumed from an earlier attempt's epoch 2: none of its own yet
        (JobStatus.RUNNING, 0, 0, 500.0, None),  # no epoch done: nothing to resume from
        (JobStatus.DISPATCHED, 3, 1, 900.0, None),  # not running yet
    ],
)
def test_a_running_job_asked_to_stop_would_stop_at_the_end_of_its_epoch(
    status: JobStatus, done: int, start: int, at: float, stop: float | None
) -> None:
    """What a preemption costs the job it makes room for: the wait until its victims stop. The policy stops
    only jobs whose stop comes soon beside the wait it saves (PREEMPT_WORTH). Its fit began at 500; now is 1000."""
    epoch = datetime(2026, 1, 1)
    job = Job(id=7, status=status, vram_mb=1000, started_at=epoch + timedelta(seconds=500), time_limit_s=5000)
    began = epoch.timestamp() + 500
    report = Progress(done=done, total=10, start=start, began=began, at=epoch.timestamp() + at)
    history = inputs.History({}, {})

    [running] = inputs.running_jobs([job], history, epoch + timedelta(seconds=1000), progress={7: report})

    assert running.stop_s == stop


def test_the_scheduler_moves_a_job_off_the_gpu_whose_work_would_end_last(
    scheduler: Scheduler, sessions: sessionmaker[Session], redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Two checkpointed jobs measured at 0.95 share GPU 0 (1.9: each at about half speed) while GPU 1 is idle;
    a third job waits on its user's quota. One of the two is asked to stop at the end of its epoch, to
    resume on GPU 1: it stays in `making_room` while it finishes its epoch, to be placed first, also by the
    next leader, and its room on GPU 1 is kept meanwhile: another user's 20000 MB job does not take it."""
    scheduler.config = replace(scheduler.config, quotas=Quotas(running=2))
    publish_node(redis, sizes=(24576, 24576))
    pair = [make_job(sessions, vram_mb=5000, time_limit_s=100000) for _ in range(2)]
    scheduler.tick()
    run_checkpointed(sessions, redis, pair)
    for job in pair:
        progress.publish_load(redis, job.id, 1, 0.95)
    make_job(sessions, vram_mb=5000)

    with caplog.at_level(logging.INFO, logger="app.scheduler.loop"):
        scheduler.tick()

    assert [reload(sessions, job.id).gpu_indices for job in pair] == [[0], [0]]
    [moved] = [job.id for job in pair if redis.exists(RUN_PREEMPT_KEY.format(job_id=job.id, attempt=1))]
    assert f"moving job {moved} to node-a GPU 1, where it ends sooner" in caplog.text
    assert (
        redis.get(RUN_PREEMPT_KEY.format(job_id=moved, attempt=1)) == b"to move to node-a GPU 1, where it ends sooner"
    )
    assert scheduler.making_room == {moved} and scheduler.moving_to == {moved: ("node-a", 1)}
    other = make_job(sessions, "bob", vram_mb=20000)
    scheduler.tick()
    assert scheduler.making_room == {moved}  # still running: kept until it is placed again
    assert reload(sessions, other.id).status is JobStatus.QUEUED
    # Kept in Redis: a new leader (this one stepped down, or died) places it first too.
    scheduler.lock.release()
    successor = Scheduler(scheduler.settings, sessions, redis)
    successor.config = scheduler.config
    assert successor.tick() == [] and successor.lock.acquire_or_renew()
    assert successor.making_room == {moved} and successor.moving_to == {moved: ("node-a", 1)}


def test_a_job_moved_out_of_a_big_jobs_way_is_told_it_made_room(
    scheduler: Scheduler, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """policy._room_on stops a long job for a big one and moves it to another GPU: its flag (the reason its log
    gives) says it made room for the big job, and the scheduler logs it as preempted, not as moved to end sooner;
    a plain move says where it goes."""
    active = [Job(id=11, attempt=1), Job(id=12, attempt=2)]
    relocated = [Preemption(1, "node-a", 0, (11,)), Preemption(11, "node-a", 1, (11,))]

    with caplog.at_level(logging.INFO, logger="app.scheduler.loop"):
        scheduler._preempt([*relocated, Preemption(12, "node-a", 1, (12,))], active)

    assert (
        redis.get(RUN_PREEMPT_KEY.format(job_id=11, attempt=1))
        == b"to make room for job 1, which would otherwise end last"
    )
    assert redis.get(RUN_PREEMPT_KEY.format(job_id=12, attempt=2)) == b"to move to node-a GPU 1, where it ends sooner"
    assert "preempting jobs 11" in caplog.text and "moving job 11" not in caplog.text
    assert "moving job 12 to node-a GPU 1" in caplog.text
