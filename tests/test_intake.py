"""Group commit of submissions: concurrent submissions share a transaction, and each still gets its own
answer (a refused one refuses nothing else)."""

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.api.intake import GroupCommit
from app.api.main import _write_submissions
from app.config import Settings
from app.db.models import Job, User
from app.db.session import transaction
from app.schemas import JobSubmit
from app.services.jobs import Submission, submit_many

CALLERS = 12
QUOTA = 3


def test_submissions_waiting_on_a_write_share_the_next_one() -> None:
    """A lone item is written at once; the items that arrive meanwhile go together in the next batch."""
    batches: list[list[int]] = []
    first_started = threading.Event()
    release_first = threading.Event()

    def write(batch: list[int]) -> list[int | Exception]:
        batches.append(batch)
        if len(batches) == 1:
            first_started.set()
            release_first.wait(10)
        return [item * 10 if item % 3 else ValueError(f"item {item} refused") for item in batch]

    async def scenario() -> list[int | BaseException]:
        group: GroupCommit[int, int] = GroupCommit(write)
        first = asyncio.create_task(group(1))
        await asyncio.to_thread(first_started.wait, 10)
        rest = [asyncio.create_task(group(item)) for item in range(2, CALLERS + 1)]
        await asyncio.sleep(0.05)  # every later caller is waiting on the first write
        release_first.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(scenario())
    assert batches == [[1], list(range(2, CALLERS + 1))]
    for item, result in zip(range(1, CALLERS + 1), results, strict=True):
        if item % 3:
            assert result == item * 10
        else:
            assert isinstance(result, ValueError) and str(result) == f"item {item} refused"


def test_a_failed_write_fails_every_caller_of_its_batch_and_the_next_batch_still_runs() -> None:
    calls = 0

    def write(batch: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database is down")
        return [item.upper() for item in batch]

    async def scenario() -> tuple[list[str | BaseException], str]:
        group: GroupCommit[str, str] = GroupCommit(write)
        failed = await asyncio.gather(group("a"), group("b"), return_exceptions=True)
        return failed, await group("c")

    failed, later = asyncio.run(scenario())
    assert all(isinstance(result, ConnectionError) for result in failed)
    assert later == "C"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"quota_queued": QUOTA})


def test_concurrent_submissions_over_the_queued_quota_are_refused_one_by_one(
    api_url: str, sessions: sessionmaker[Session], make_user: Callable[..., tuple[User, str]]
) -> None:
    """Twelve simultaneous submissions against a queued quota of 3 (the API process batches them): exactly
    three are queued, the other nine get 429 quota_exceeded, and nothing else is written."""
    user, token = make_user("burst")
    headers = {"Authorization": f"Bearer {token}"}

    def submit(_: int) -> httpx.Response:
        return httpx.post(
            f"{api_url}/api/v1/jobs", json={"command": ["true"], "vram_mb": 100}, headers=headers, timeout=30
        )

    with ThreadPoolExecutor(CALLERS) as pool:
        responses = list(pool.map(submit, range(CALLERS)))
    accepted = [r for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code != 201]
    assert len(accepted) == QUOTA
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} == {"quota_exceeded"}
    with sessions() as session:
        stored = session.scalars(select(Job.id).where(Job.user_id == user.id)).all()
        assert sorted(stored) == sorted(r.json()["id"] for r in accepted)
        assert session.scalar(select(func.count()).select_from(Job)) == QUOTA


def test_one_batch_counts_its_own_jobs_against_the_quota(
    settings: Settings,
    sessions: sessionmaker[Session],
    redis,
    make_user: Callable[..., tuple[User, str]],  # noqa: ANN001
) -> None:
    """The quota holds inside a single batch, and a refusal (here: 'auto' with no history) uses none of it."""
    user, _ = make_user("batch")
    specs = [{"command": ["true"], "vram_mb": "auto"}] + [{"command": ["true"], "vram_mb": 100}] * 4
    with transaction(sessions) as session:
        results = submit_many(
            session, redis, [Submission(user, JobSubmit.model_validate(spec)) for spec in specs], settings
        )
    assert [type(result).__name__ for result in results] == ["NoHistory", "tuple", "tuple", "tuple", "QuotaExceeded"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == QUOTA


def test_a_submission_in_another_process_waits_and_counts_the_first_ones_jobs(
    settings: Settings,
    sessions: sessionmaker[Session],
    redis,  # noqa: ANN001
    make_user: Callable[..., tuple[User, str]],
) -> None:
    """Two API processes (here two transactions) submit for one user under a queued quota of 3: the second
    waits for the first's transaction to end, then sees its three jobs and is refused."""
    user, _ = make_user("twice")
    spec = JobSubmit.model_validate({"command": ["true"], "vram_mb": 100})

    def second() -> list:
        with transaction(sessions) as session:
            return submit_many(session, redis, [Submission(user, spec)], settings)

    with ThreadPoolExecutor(1) as pool:
        with transaction(sessions) as session:
            assert all(
                isinstance(r, tuple) for r in submit_many(session, redis, [Submission(user, spec)] * QUOTA, settings)
            )
            later = pool.submit(second)
            time.sleep(0.5)  # time enough for the second to run, were it not waiting for this one
            assert not later.done()
        [result] = later.result(timeout=30)

    assert type(result).__name__ == "QuotaExceeded"
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == QUOTA


def test_a_submission_the_database_refuses_fails_alone_in_its_group_commit(
    settings: Settings, sessions: sessionmaker[Session], make_user: Callable[..., tuple[User, str]], redis: Redis
) -> None:
    """A value validation let through but the database cannot hold (here a priority past its INTEGER, made
    without validation) rolls back the batch; written again one by one, only that submission fails."""
    user, _ = make_user("mixed")
    good = JobSubmit(command=["true"], vram_mb=100)
    bad = JobSubmit.model_construct(**{**good.model_dump(), "priority": 10**30})
    state = SimpleNamespace(sessions=sessions, redis=redis, settings=settings)

    results = _write_submissions(state, [Submission(user, good), Submission(user, bad), Submission(user, good)])  # type: ignore[arg-type]

    assert [type(result) for result in results][::2] == [tuple, tuple]
    assert isinstance(results[1], Exception) and not isinstance(results[1], tuple)
    with sessions() as session:
        assert sorted(session.scalars(select(Job.id)).all()) == sorted(r[0].id for r in results[::2])  # type: ignore[index]
