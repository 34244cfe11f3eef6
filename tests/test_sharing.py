"""Issue 4 live: two simulated nodes, pending reasons, quotas, foreign processes, measured utilisation."""

import getpass
import subprocess
import sys
import time
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import Settings
from app.db.models import Run
from app.enums import JobStatus
from app.services import progress
from app.services.progress import Progress
from tests.conftest import Cluster
from tests.test_end_to_end import py, submit


def test_two_nodes_share_the_work_and_a_two_gpu_job_stays_on_one(
    cluster: Cluster, client: TestClient, auth: dict[str, str]
) -> None:
    cluster.start_node(node="node-b", gpus="2x8GiB")
    time.sleep(1.2)  # a snapshot of both
    assert {g["node"] for g in client.get("/api/v1/gpus", headers=auth).json()} == {"node-a", "node-b"}

    pair = submit(client, auth, command=["sleep", "1"], vram_mb=6000, gpus=2)
    # node-a holds one single for 3 s; the pair frees node-b well before, so the other two must go there
    singles = [submit(client, auth, command=["sleep", "3"], vram_mb=6000) for _ in range(3)]

    done = cluster.wait(pair["id"])
    assert (done.node, sorted(done.gpu_indices)) == ("node-b", [0, 1])
    nodes = {cluster.wait(job["id"]).node for job in singles}
    assert nodes == {"node-a", "node-b"}


def test_a_queued_job_says_what_it_waits_for(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    cluster.scheduler.forecast_every_s = 0  # every tick, not every 10 s
    blocker = submit(client, auth, command=["sleep", "30"], vram_mb=6000, time_limit_s=30)
    cluster.wait(blocker["id"], {JobStatus.RUNNING})
    waiting = submit(client, auth, command=["true"], vram_mb=5000, time_limit_s=20)
    behind = submit(client, auth, command=["true"], vram_mb=5000)
    time.sleep(0.5)

    job = client.get(f"/api/v1/jobs/{waiting['id']}", headers=auth).json()
    second = client.get(f"/api/v1/jobs/{behind['id']}", headers=auth).json()

    assert job["status"] == "queued"
    assert job["pending_reason"].startswith("needs 5000 MB on one GPU; most available now: 2192 MB on node-a GPU 0")
    # The blocker's time limit dates the first; the first's dates the second (they cannot share the GPU).
    started = datetime.fromisoformat(client.get(f"/api/v1/jobs/{blocker['id']}", headers=auth).json()["started_at"])
    first_start = datetime.fromisoformat(job["estimated_start"])
    assert abs((first_start - started).total_seconds() - 30) < 2
    assert (datetime.fromisoformat(second["estimated_start"]) - first_start).total_seconds() == pytest.approx(20)
    client.post(f"/api/v1/jobs/{blocker['id']}/cancel", headers=auth)
    assert cluster.wait(waiting["id"]).status is JobStatus.SUCCEEDED
    assert cluster.wait(behind["id"]).status is JobStatus.SUCCEEDED


def test_foreign_processes_show_with_their_user(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    from worker.gpu.simulated import SimulatedBackend

    notebook = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        SimulatedBackend([8192], cluster.settings.simulator_dir).hold(notebook.pid, 0, 1500)
        time.sleep(1.5)
        [gpu] = client.get("/api/v1/gpus", headers=auth).json()
    finally:
        notebook.kill()
        notebook.wait()
    assert gpu["processes"] == [{"pid": notebook.pid, "user": getpass.getuser(), "used_mb": 1500}]


def test_measured_utilisation_is_recorded(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    job = submit(client, auth, command=py("import time, vramq_sim; vramq_sim.use(500, util=0.35); time.sleep(1)"))
    assert cluster.wait(job["id"]).status is JobStatus.SUCCEEDED

    with cluster.sessions() as session:
        [run] = session.scalars(select(Run).where(Run.job_id == job["id"])).all()
    assert run.util == pytest.approx(0.35)
    [shown] = client.get(f"/api/v1/jobs/{job['id']}/runs", headers=auth).json()
    assert shown["util"] == pytest.approx(0.35)


def test_queued_quota_refuses_and_running_quota_holds_back(
    settings: Settings, client: TestClient, auth: dict[str, str], cluster: Cluster
) -> None:
    client.app.state.settings = settings.model_copy(update={"quota_queued": 2})  # type: ignore[attr-defined]
    cluster.scheduler.config = cluster.scheduler.config.__class__(
        quotas=cluster.scheduler.config.quotas.__class__(running=1)
    )
    first = submit(client, auth, command=["sleep", "2"])
    second = submit(client, auth, command=["true"])
    cluster.wait(first["id"], {JobStatus.RUNNING})
    time.sleep(0.5)
    assert client.get(f"/api/v1/jobs/{second['id']}", headers=auth).json()["pending_reason"] == (
        "user quota: 1 running jobs"
    )
    submit(client, auth, command=["true"])  # a second queued job is still within the quota of 2
    third = client.post("/api/v1/jobs", json={"command": ["true"], "vram_mb": 100}, headers=auth)

    assert third.status_code == 429 and third.json()["error"]["code"] == "quota_exceeded"
    assert cluster.wait(second["id"]).status is JobStatus.SUCCEEDED


def test_a_running_jobs_training_progress_reaches_the_scheduler(
    cluster: Cluster, client: TestClient, auth: dict[str, str]
) -> None:
    """What the Keras autolog writes to progress.json after each epoch (here written by hand) is copied
    to Redis with the heartbeat, where the scheduler reads it for the job's expected end."""
    code = (
        "import json, os, pathlib, time; "
        "pathlib.Path(os.environ['VRAMQ_OUTPUT_DIR'], 'progress.json')"
        ".write_text(json.dumps({'done': 3, 'total': 10, 'start': 1, 'began': time.time() - 1})); time.sleep(3)"
    )
    job = submit(client, auth, command=py(code))
    deadline = time.monotonic() + 30
    reports: dict[int, Progress] = {}
    while job["id"] not in reports and time.monotonic() < deadline:
        reports, _, _ = progress.read(cluster.redis, [(job["id"], 1)])
        time.sleep(0.1)

    report = reports[job["id"]]
    assert (report.done, report.total, report.start) == (3, 10, 1)
    assert 0 < report.at - report.began < 10
    assert abs(report.at - time.time()) < 10  # dated by the file: when the last epoch ended
    assert cluster.wait(job["id"]).status is JobStatus.SUCCEEDED


def test_a_running_jobs_measured_load_reaches_the_scheduler(
    cluster: Cluster, client: TestClient, auth: dict[str, str]
) -> None:
    """Once the worker has RUN_LOAD_SAMPLES samples of a job's compute utilisation, their mean goes to
    Redis with its heartbeat, where the scheduler reads it as the job's load; the key goes with the job."""
    job = submit(client, auth, command=py("import time, vramq_sim; vramq_sim.use(500, util=0.8); time.sleep(60)"))
    deadline = time.monotonic() + 40
    loads: dict[int, float] = {}
    while job["id"] not in loads and time.monotonic() < deadline:
        loads = progress.read_loads(cluster.redis, [(job["id"], 1)])
        time.sleep(0.1)

    assert loads[job["id"]] == pytest.approx(0.8)
    client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth)
    assert cluster.wait(job["id"]).status is JobStatus.CANCELLED
    assert progress.read_loads(cluster.redis, [(job["id"], 1)]) == {}
