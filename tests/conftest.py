"""Fixtures: real Redis, real SQLite and PostgreSQL, real processes. Only NVML and the GPU are fake.

A service that is not running makes its tests skip locally and fail in CI (CI=true).
"""

import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.config import Settings
from app.db.migrate import upgrade
from app.db.models import Job, User
from app.db.session import make_engine, make_sessionmaker, transaction
from app.enums import JobStatus
from app.lifetime import ending_with_me
from app.scheduler.loop import Scheduler
from app.services.users import create_user

REDIS_URL = os.environ.get("VRAMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
POSTGRES_URL = os.environ.get("VRAMQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = bool(os.environ.get("CI"))
REPO = Path(__file__).resolve().parents[1]


def _unavailable(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required in CI and is not reachable")
    pytest.skip(f"{what} is not reachable")


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except RedisError:
        _unavailable(f"Redis at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    except Exception:  # noqa: BLE001 - any connection failure means "not reachable"
        _unavailable(f"PostgreSQL at {POSTGRES_URL}")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that uses it runs on SQLite and on PostgreSQL, on an empty, migrated schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vramq.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    yield url


def make_settings(home: Path, database_url: str, redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home,
        "database_url": database_url,
        "redis_url": redis_url,
        "gpus": "1x8GiB",
        "node": "node-a",
        "slots": 4,
        "safety_margin_mb": 0,
        "overhead_mb": 500,
        "cap_tolerance_mb": 100,
        "cancel_grace_s": 2.0,
        "preempt_grace_s": 3.0,
        "dispatch_interval_s": 0.05,
        "sample_interval_s": 0.1,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMQ_")}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[f"VRAMQ_{name.upper()}"] = str(value)
    return env


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis: Redis, redis_url: str) -> Settings:
    settings = make_settings(tmp_path / "home", database_url, redis_url)
    upgrade(settings)
    return settings


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def make_user(sessions: sessionmaker[Session]) -> Callable[..., tuple[User, str]]:
    def factory(name: str = "alice", admin: bool = False) -> tuple[User, str]:
        with transaction(sessions) as session:
            return create_user(session, name, admin=admin)

    return factory


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def auth(make_user: Callable[..., tuple[User, str]]) -> dict[str, str]:
    _, token = make_user("alice")
    return {"Authorization": f"Bearer {token}"}


class Cluster:
    """A scheduler thread and one `vramq node` subprocess against the test's Redis and database."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], redis: Redis) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = redis
        self.stop = threading.Event()
        self.scheduler = Scheduler(settings, sessions, redis)
        self.thread = threading.Thread(target=self.scheduler.run, args=(self.stop,), daemon=True)
        self.nodes: list[subprocess.Popen[bytes]] = []

    def start_node(self, **overrides: object) -> subprocess.Popen[bytes]:
        settings = self.settings.model_copy(update=overrides)
        # Ends with this test run however it ends, or its slots would take the next run's jobs (same Redis db).
        node = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "node"], env=settings_env(settings), cwd=REPO, preexec_fn=ending_with_me()
        )
        self.nodes.append(node)
        deadline = time.monotonic() + 20
        while not self.redis.exists(f"vramq:node:{settings.node}"):
            if time.monotonic() > deadline or node.poll() is not None:
                raise RuntimeError("the node agent did not publish a snapshot")
            time.sleep(0.05)
        return node

    def wait(self, job_id: int, statuses: set[JobStatus] | None = None, timeout: float = 60) -> Job:
        """Wait until the job reaches one of `statuses` (default: any terminal status)."""
        wanted = statuses or {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
        deadline = time.monotonic() + timeout
        while True:
            with self.sessions() as session:
                job = session.get(Job, job_id)
                assert job is not None
                if job.status in wanted:
                    return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job.status}, not {wanted}, after {timeout}s{self._strays()}")
            time.sleep(0.05)

    def _strays(self) -> str:
        """RQ slots on this Redis db that no agent of this test started (RQ names each slot's connection
        `node.slot.pid`): left behind by an earlier run, they take this test's jobs and drop them."""
        ours = {
            child.pid for node in self.nodes if node.poll() is None for child in psutil.Process(node.pid).children()
        }
        db = str(self.redis.connection_pool.connection_kwargs.get("db", 0))
        slots = [c["name"] for c in self.redis.client_list() if c["db"] == db and c["name"].count(".") == 2]
        strays = [name for name in slots if (pid := name.rsplit(".", 1)[1]).isdigit() and int(pid) not in ours]
        return f"; RQ slots on this db that this test did not start: {strays}" if strays else ""

    def close(self) -> None:
        self.stop.set()
        for node in self.nodes:
            if node.poll() is None:
                node.terminate()
        for node in self.nodes:
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                warnings.warn(f"node agent {node.pid} did not stop within 20 s of SIGTERM: killed", stacklevel=1)
                node.kill()
        self.thread.join(timeout=10)


@pytest.fixture
def cluster(settings: Settings, sessions: sessionmaker[Session], redis: Redis) -> Iterator[Cluster]:
    cluster = Cluster(settings, sessions, redis)
    cluster.thread.start()
    cluster.start_node()
    yield cluster
    cluster.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_api(settings: Settings, command: str = "api", **output: Any) -> tuple[subprocess.Popen[Any], str]:
    """`vramq api` (or `vramq up`, which serves it too) on a free port, returned once /healthz answers;
    `output`: Popen's stdout/stderr/text."""
    port = free_port()
    env = settings_env(settings.model_copy(update={"port": port}))
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", command], env=env, cwd=REPO, preexec_fn=ending_with_me(), **output
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise AssertionError("the API did not start")
        time.sleep(0.1)


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    server, url = start_api(settings, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield url
    server.terminate()
    server.wait(timeout=10)
