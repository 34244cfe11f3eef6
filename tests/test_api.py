"""REST API v1: auth, validation, errors and the read endpoints (DESIGN section 4)."""

import threading
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.config import Settings
from app.db.models import Job, User
from app.db.session import transaction
from app.enums import JobStatus
from app.services import progress
from app.services.nodes import GpuSnapshot, NodeSnapshot, publish
from tests.factories import make_job, past_runs


def publish_node(redis: Redis, node: str = "node-a", sizes: tuple[int, ...] = (8192,), foreign: int = 0) -> None:
    gpus = [
        GpuSnapshot(
            index=i,
            uuid=f"GPU-{node}-{i}",
            name="Test GPU",
            total_mb=size,
            used_mb=foreign,
            free_mb=size - foreign,
            foreign_mb=foreign,
        )
        for i, size in enumerate(sizes)
    ]
    publish(redis, NodeSnapshot(node=node, time=time.time(), slots=4, simulated=True, gpus=gpus))


def count_jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_health_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["sql"] == "ok" and ready.json()["redis"] == "ok"


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc"])
def test_endpoints_need_a_valid_token(client: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/jobs", headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_submit_returns_the_job(client: TestClient, auth: dict[str, str], redis: Redis) -> None:
    publish_node(redis)
    response = client.post(
        "/api/v1/jobs",
        json={"command": ["python", "train.py"], "vram_mb": 4000, "name": "first", "env": {"A": "1"}},
        headers=auth,
    )

    assert response.status_code == 201
    job = response.json()
    assert job["status"] == "queued" and job["user"] == "alice" and job["attempt"] == 1
    assert job["command"] == ["python", "train.py"] and job["env"] == {"A": "1"} and job["gpus"] == 1
    assert job["created_at"].endswith(("Z", "+00:00"))
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=auth).json() == job


@pytest.mark.parametrize(
    "body",
    [
        {"command": [], "vram_mb": 100},
        {"command": [""], "vram_mb": 100},
        {"command": "python train.py", "vram_mb": 100},
        {"command": ["true"], "vram_mb": 0},
        {"command": ["true"], "vram_mb": -5},
        {"command": ["true"], "vram_mb": "lots"},
        {"command": ["true"], "vram_mb": 1.5},
        {"command": ["true"]},
        {"vram_mb": 100},
        {"command": ["true"], "vram_mb": 100, "colour": "blue"},
        {"command": ["true"], "vram_mb": 100, "gpus": 0},
        {"command": ["true"], "vram_mb": 100, "time_limit_s": 0},
        {"command": ["true"], "vram_mb": 100, "max_retries": -1},
        {"command": ["true"], "vram_mb": 100, "workdir": "relative/dir"},
        {"command": ["true"], "vram_mb": 100, "env": {"A": 1}},
        {"command": ["true"], "vram_mb": 100, "env": {"A=B": "x"}},
        # Past what the database holds: a 500 before, and every submission of the same group commit failed with it.
        {"command": ["true"], "vram_mb": 2**31},
        {"command": ["true"], "vram_mb": 100, "gpus": 2**31},
        {"command": ["true"], "vram_mb": 100, "priority": 10**30},
        {"command": ["true"], "vram_mb": 100, "priority": -(2**31) - 1},
        {"command": ["true"], "vram_mb": 100, "time_limit_s": 2**31},
        # NUL: no process takes it in an argument, a path or its environment, and PostgreSQL's text cannot hold it.
        {"command": ["python", "train.py\x00"], "vram_mb": 100},
        {"command": ["true"], "vram_mb": 100, "workdir": "/data\x00"},
        {"command": ["true"], "vram_mb": 100, "env": {"A": "x\x00y"}},
        {"command": ["true"], "vram_mb": 100, "name": "a\x00"},
    ],
)
def test_bad_submissions_are_refused_and_change_nothing(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session], body: dict
) -> None:
    response = client.post("/api/v1/jobs", json=body, headers=auth)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error" and error["message"]
    assert count_jobs(sessions) == 0


def test_malformed_json_is_a_clear_422(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post("/api/v1/jobs", content=b"{not json", headers={**auth, "Content-Type": "application/json"})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith("body: not valid JSON (") and "at character 1" in error["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # One sentence for the request, not one per member of its int-or-"auto" union.
        ({"vram_mb": 0}, 'vram_mb: should be a whole number of MiB from 1 to 2147483647, or "auto"'),
        ({"vram_mb": "lots"}, 'vram_mb: should be a whole number of MiB from 1 to 2147483647, or "auto"'),
        # Our own checks in their own words, without pydantic's "Value error, ".
        ({"workdir": "relative/dir"}, "workdir: must be an absolute path on the node"),
        ({"env": {"A=B": "x"}}, "env: not an environment variable name: 'A=B'"),
    ],
)
def test_a_refused_submission_says_what_is_wrong_in_one_sentence(
    client: TestClient, auth: dict[str, str], body: dict, message: str
) -> None:
    response = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 100, **body}, headers=auth)

    assert response.status_code == 422
    assert response.json()["error"]["message"] == message


def test_request_larger_than_any_gpu_is_unsatisfiable(
    client: TestClient, auth: dict[str, str], redis: Redis, sessions: sessionmaker[Session]
) -> None:
    publish_node(redis, sizes=(8192,))

    too_big = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 9000}, headers=auth)
    too_many = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 100, "gpus": 2}, headers=auth)

    assert too_big.status_code == 422 and too_big.json()["error"]["code"] == "vram_unsatisfiable"
    assert "9000" in too_big.json()["error"]["message"]
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "vram_unsatisfiable"
    assert count_jobs(sessions) == 0


def test_unsatisfiable_counts_the_largest_of_several_nodes(
    client: TestClient, auth: dict[str, str], redis: Redis
) -> None:
    publish_node(redis, "small", sizes=(8192, 8192))
    publish_node(redis, "large", sizes=(24576,))

    fits_large = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 20000}, headers=auth)
    two_small = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 8000, "gpus": 2}, headers=auth)
    two_large = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 9000, "gpus": 2}, headers=auth)

    assert fits_large.status_code == 201
    assert two_small.status_code == 201
    assert two_large.json()["error"]["code"] == "vram_unsatisfiable"


def test_list_is_newest_first_with_filters_and_cursor(
    client: TestClient, auth: dict[str, str], make_user: Callable[..., tuple[User, str]]
) -> None:
    _, bob_token = make_user("bob")
    bob = {"Authorization": f"Bearer {bob_token}"}
    ids = [
        client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 10}, headers=auth).json()["id"]
        for _ in range(5)
    ]
    bobs = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 10}, headers=bob).json()["id"]
    client.post(f"/api/v1/jobs/{ids[0]}/cancel", headers=auth)

    first = client.get("/api/v1/jobs?limit=4", headers=auth)
    second = client.get(f"/api/v1/jobs?limit=4&cursor={first.headers['X-Next-Cursor']}", headers=auth)

    assert [j["id"] for j in first.json()] == [bobs, ids[4], ids[3], ids[2]]
    assert [j["id"] for j in second.json()] == [ids[1], ids[0]]
    assert "X-Next-Cursor" not in second.headers
    assert [j["id"] for j in client.get("/api/v1/jobs?user=bob", headers=auth).json()] == [bobs]
    assert [j["id"] for j in client.get("/api/v1/jobs?status=cancelled", headers=auth).json()] == [ids[0]]
    assert client.get("/api/v1/jobs?status=bogus", headers=auth).status_code == 422


def test_unknown_things_are_404_with_a_code(client: TestClient, auth: dict[str, str]) -> None:
    for path, code in [
        ("/api/v1/jobs/999", "job_not_found"),
        ("/api/v1/jobs/999/runs", "job_not_found"),
        ("/api/v1/jobs/999/logs", "job_not_found"),
        ("/api/v1/models/nope/versions", "model_not_found"),
        ("/api/v1/models/nope/versions/1/artifact", "model_not_found"),
        ("/api/v1/nothing-here", "not_found"),
    ]:
        response = client.get(path, headers=auth)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == code, path


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/jobs/99999999999999999999",
        "/api/v1/jobs/2147483648/runs",
        "/api/v1/jobs/0/metrics",
        "/api/v1/jobs?cursor=99999999999999999999",
        "/api/v1/jobs/1/logs?attempt=2147483648",
        "/api/v1/models/m/versions/99999999999999999999/artifact",
    ],
)
def test_ids_the_database_cannot_hold_are_a_422(client: TestClient, auth: dict[str, str], path: str) -> None:
    """A 500 from the database's integer range before (SQLite's OverflowError, PostgreSQL's out of range)."""
    response = client.get(path, headers=auth)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_a_value_the_database_cannot_hold_is_a_client_error(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    """A NUL in a model's name: SQLite looks for it, PostgreSQL's text cannot hold it (a 500 before)."""
    response = client.get("/api/v1/models/a%00b/versions", headers=auth)

    postgresql = settings.sqlalchemy_url.startswith("postgresql")
    assert response.status_code == (422 if postgresql else 404)
    assert response.json()["error"]["code"] == ("invalid_value" if postgresql else "model_not_found")


def test_logs_of_a_queued_job_are_empty_and_of_a_missing_attempt_404(client: TestClient, auth: dict[str, str]) -> None:
    job = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 10}, headers=auth).json()

    assert client.get(f"/api/v1/jobs/{job['id']}/logs", headers=auth).text == ""
    missing = client.get(f"/api/v1/jobs/{job['id']}/logs?attempt=2", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "run_not_found"


def test_with_redis_down_submissions_are_kept_and_errors_stay_json(
    settings: Settings, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    """SQL is the source of truth: a job submitted while Redis is down is queued (unchecked against the
    live GPUs, which it says), shown without its waiting reason, and what needs Redis answers 503."""
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as client:
        submitted = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 100}, headers=auth)
        shown = client.get(f"/api/v1/jobs/{submitted.json()['id']}", headers=auth)
        gpus = client.get("/api/v1/gpus", headers=auth)

    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["warnings"] == [
        "not checked against the live GPUs (Redis is unavailable): it waits if none can hold it"
    ]
    assert count_jobs(sessions) == 1
    assert (shown.status_code, shown.json()["pending_reason"]) == (200, "unknown while Redis is unavailable")
    assert gpus.status_code == 503
    assert gpus.json()["error"]["code"] == "redis_unavailable"


def test_only_admins_create_users(
    client: TestClient, auth: dict[str, str], make_user: Callable[..., tuple[User, str]]
) -> None:
    _, admin_token = make_user("root", admin=True)
    admin = {"Authorization": f"Bearer {admin_token}"}

    refused = client.post("/api/v1/users", json={"name": "carol"}, headers=auth)
    created = client.post("/api/v1/users", json={"name": "carol"}, headers=admin)
    again = client.post("/api/v1/users", json={"name": "carol"}, headers=admin)

    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert created.status_code == 201 and created.json()["name"] == "carol" and created.json()["admin"] is False
    carol = {"Authorization": f"Bearer {created.json()['token']}"}
    assert client.get("/api/v1/jobs", headers=carol).status_code == 200
    assert again.status_code == 409 and again.json()["error"]["code"] == "user_exists"


def test_tokens_are_stored_hashed(make_user: Callable[..., tuple[User, str]], sessions: sessionmaker[Session]) -> None:
    user, token = make_user("dave")

    with sessions() as session:
        stored = session.get(User, user.id)
        assert stored is not None and token not in stored.token_hash


def test_gpus_show_reservations_and_foreign_memory(client: TestClient, auth: dict[str, str], redis: Redis) -> None:
    publish_node(redis, sizes=(8192, 16384), foreign=1000)

    gpus = client.get("/api/v1/gpus", headers=auth).json()

    assert [
        (g["node"], g["index"], g["total_mb"], g["foreign_mb"], g["reserved_mb"], g["available_mb"]) for g in gpus
    ] == [("node-a", 0, 8192, 1000, 0, 7192), ("node-a", 1, 16384, 1000, 0, 15384)]
    assert set(gpus[0]) >= {"uuid", "name", "used_mb", "free_mb", "simulated", "jobs"}


def test_gpus_show_the_compute_load_the_scheduler_packs_by(
    client: TestClient, auth: dict[str, str], redis: Redis, sessions: sessionmaker[Session]
) -> None:
    """Per GPU, its jobs' loads: measured while running, else from history (finished runs, else what its
    fingerprint's running jobs measure), else 0.5."""
    publish_node(redis, sizes=(8192, 16384, 8192))
    past_runs(sessions, "light", 100, outcome=JobStatus.SUCCEEDED, util=0.3)
    running = {"status": JobStatus.RUNNING, "node": "node-a", "attempt": 1}
    make_job(sessions, fingerprint="light", gpu_indices=[0], **running)
    measured = make_job(sessions, fingerprint="sweep", gpu_indices=[0], **running)
    progress.publish_load(redis, measured.id, 1, 0.8)
    make_job(sessions, gpu_indices=[1], status=JobStatus.DISPATCHED, node="node-a")
    make_job(sessions, fingerprint="sweep", gpu_indices=[2], status=JobStatus.DISPATCHED, node="node-a")

    gpus = client.get("/api/v1/gpus", headers=auth).json()

    assert [g["load"] for g in gpus] == [1.1, 0.5, 0.8]


def test_only_the_owner_or_an_admin_cancels(
    client: TestClient, auth: dict[str, str], make_user: Callable[..., tuple[User, str]]
) -> None:
    _, bob_token = make_user("bob")
    _, admin_token = make_user("root", admin=True)
    first = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 10}, headers=auth).json()
    second = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 10}, headers=auth).json()

    refused = client.post(f"/api/v1/jobs/{first['id']}/cancel", headers={"Authorization": f"Bearer {bob_token}"})
    by_admin = client.post(f"/api/v1/jobs/{first['id']}/cancel", headers={"Authorization": f"Bearer {admin_token}"})
    by_owner = client.post(f"/api/v1/jobs/{second['id']}/cancel", headers=auth)

    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert by_admin.status_code == 202 and by_admin.json()["status"] == "cancelled"
    assert by_owner.status_code == 202 and by_owner.json()["status"] == "cancelled"


def test_reads_do_not_wait_for_a_writer(
    client: TestClient,
    auth: dict[str, str],
    sessions: sessionmaker[Session],
    make_user: Callable[..., tuple[User, str]],
) -> None:
    """While another process-like writer holds the database's write lock (the scheduler mid-dispatch),
    listing jobs and reading one still answer: the API reads in lock-free transactions."""
    job_id = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 100}, headers=auth).json()["id"]
    answers: list[int] = []
    with transaction(sessions) as writer:
        writer.execute(update(Job).where(Job.id == job_id).values(priority=5))  # holds the write lock
        reader = threading.Thread(
            target=lambda: answers.extend(
                client.get(path, headers=auth).status_code for path in ("/api/v1/jobs", f"/api/v1/jobs/{job_id}")
            )
        )
        reader.start()
        reader.join(timeout=20)  # SQLite's busy timeout is 30 s: a read that waited for the lock is still waiting
        assert answers == [200, 200]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth).json()["priority"] == 5
