"""Invariant 1 under load: 200 submissions at once against a small simulated GPU, through a real API
process, scheduler and node; the reservation history must never exceed the GPU."""

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import Job, ModelAlias, ModelVersion, Run, User
from app.db.session import transaction
from app.enums import JobStatus
from app.services import models
from tests.conftest import Cluster
from tests.factories import make_job

GPU_MB = 2000
JOBS = 200


def test_simultaneous_submissions_never_over_commit(
    settings: Settings,
    sessions: sessionmaker[Session],
    redis,  # noqa: ANN001
    api_url: str,
    make_user: Callable[..., tuple[User, str]],
) -> None:
    cluster = Cluster(settings, sessions, redis)
    cluster.thread.start()
    try:
        cluster.start_node(gpus=f"1x{GPU_MB}MiB", slots=8)
        _, token = make_user("load")
        rng = random.Random(1)
        sizes = [rng.randint(200, 1200) for _ in range(JOBS)]
        headers = {"Authorization": f"Bearer {token}"}

        def submit(vram_mb: int) -> int:
            body = {"command": ["sleep", "0.1"], "vram_mb": vram_mb}
            response = httpx.post(f"{api_url}/api/v1/jobs", json=body, headers=headers, timeout=60)
            assert response.status_code == 201, response.text
            return int(response.json()["id"])

        with ThreadPoolExecutor(max_workers=32) as pool:
            ids = list(pool.map(submit, sizes))
        assert len(set(ids)) == JOBS

        seen_reserved = []
        deadline = time.monotonic() + 240
        while True:
            with sessions() as session:
                open_jobs = session.scalar(
                    select(Job.id).where(Job.status.not_in(["succeeded", "failed", "cancelled"])).limit(1)
                )
            # Sampled after the check, so the last sample is taken once every job has ended.
            [gpu] = httpx.get(f"{api_url}/api/v1/gpus", headers=headers).json()
            seen_reserved.append(gpu["reserved_mb"])
            if open_jobs is None:
                break
            assert time.monotonic() < deadline, "jobs did not finish in time"
            time.sleep(0.2)
    finally:
        cluster.close()

    with sessions() as session:
        jobs = session.scalars(select(Job)).all()
        runs = session.scalars(select(Run)).all()
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * JOBS
    assert sorted(run.job_id for run in runs) == sorted(ids)  # one attempt each: exactly one terminal state
    assert all(run.released_at is not None and run.gpu_indices == [0] for run in runs)
    assert max(seen_reserved) <= GPU_MB and seen_reserved[-1] == 0
    # Replay the reservation history: at every moment one began, the sum held must fit the GPU.
    for run in runs:
        held = sum(other.vram_mb for other in runs if other.reserved_at <= run.reserved_at < other.released_at)
        assert held <= GPU_MB, f"over-committed at {run.reserved_at}: {held} MB reserved on a {GPU_MB} MB GPU"
    most = max(sum(o.vram_mb for o in runs if o.reserved_at <= r.reserved_at < o.released_at) for r in runs)
    assert most > GPU_MB // 2  # the GPU was really shared, not run one job at a time


def test_attempts_that_end_at_once_each_get_their_own_model_version(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """Two workers register a model of the same name in overlapping transactions (two jobs of a sweep that
    end together): the second waits for the first and takes the next version, instead of colliding on
    (name, version) and losing the end of its job with it."""
    jobs = [make_job(sessions, status=JobStatus.SUCCEEDED) for _ in range(2)]
    path = tmp_path / "model.keras"
    path.write_bytes(b"weights")

    def register(job: Job) -> int:
        with transaction(sessions) as session:
            return models.register(session, name="model", path=path, job_id=job.id, attempt=1, metrics={}).version

    with ThreadPoolExecutor(1) as pool:
        with transaction(sessions) as session:
            first = models.register(session, name="model", path=path, job_id=jobs[0].id, attempt=1, metrics={})
            second = pool.submit(register, jobs[1])
            time.sleep(0.5)  # time enough for the second to number its version, were it not waiting
            assert not second.done()
        assert (first.version, second.result(timeout=30)) == (1, 2)

    with sessions() as session:
        stored = session.execute(select(ModelVersion.job_id, ModelVersion.version).order_by(ModelVersion.version))
        assert stored.all() == [(jobs[0].id, 1), (jobs[1].id, 2)]


def test_one_alias_set_twice_at_once_ends_on_the_later_version(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """Two admins point a new alias at different versions in overlapping transactions: the second waits
    and moves the alias, instead of failing on (name, alias)."""
    job = make_job(sessions, status=JobStatus.SUCCEEDED)
    path = tmp_path / "model.keras"
    path.write_bytes(b"weights")
    with transaction(sessions) as session:
        for _ in range(2):
            models.register(session, name="model", path=path, job_id=job.id, attempt=1, metrics={})

    def point(version: int) -> int:
        with transaction(sessions) as session:
            return models.set_alias(session, "model", "prod", version).version

    with ThreadPoolExecutor(1) as pool:
        with transaction(sessions) as session:
            models.set_alias(session, "model", "prod", 1)
            later = pool.submit(point, 2)
            time.sleep(0.5)  # time enough for the second to create the alias too, were it not waiting
            assert not later.done()
        assert later.result(timeout=30) == 2

    with sessions() as session:
        assert session.scalars(select(ModelAlias.version).where(ModelAlias.alias == "prod")).all() == [2]
