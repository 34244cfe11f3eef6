"""A real node agent, real RQ workers, real job processes, on simulated GPUs."""

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.constants import RUN_LOG_KEEP_BYTES, RUN_LOG_MAX_BYTES, RUN_LOG_TTL_S, RUN_PREEMPT_KEY
from app.db.models import Run
from app.enums import FailureReason, JobStatus
from app.services import progress
from app.services.jobs import _read_log
from app.services.models import file_sha256
from tests.conftest import Cluster
from worker import task
from worker.task import LogMirror


def submit(client: TestClient, auth: dict[str, str], **body: object) -> dict:
    response = client.post("/api/v1/jobs", json={"vram_mb": 1000, **body}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


def py(code: str) -> list[str]:
    return ["python", "-c", code]


def test_job_runs_with_the_job_environment(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    keys = [
        "VRAMQ_JOB_ID",
        "VRAMQ_ATTEMPT",
        "VRAMQ_VRAM_MB",
        "VRAMQ_OUTPUT_DIR",
        "CUDA_VISIBLE_DEVICES",
        "TF_FORCE_GPU_ALLOW_GROWTH",
        "VRAMQ_TF_MEMORY_LIMIT_MB",
        "MY_VAR",
    ]
    code = f"import os, json; print(json.dumps({{k: os.environ.get(k) for k in {keys!r}}}))"
    job = submit(client, auth, command=py(code), vram_mb=3000, env={"MY_VAR": "x"})

    done = cluster.wait(job["id"])

    assert done.status is JobStatus.SUCCEEDED, client.get(f"/api/v1/jobs/{job['id']}/logs", headers=auth).text
    seen = json.loads(client.get(f"/api/v1/jobs/{job['id']}/logs", headers=auth).text.strip().splitlines()[-1])
    assert seen["VRAMQ_JOB_ID"] == str(job["id"])
    assert seen["VRAMQ_ATTEMPT"] == "1"
    assert seen["VRAMQ_VRAM_MB"] == "3000"
    assert seen["CUDA_VISIBLE_DEVICES"] == "0"
    assert seen["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert seen["VRAMQ_TF_MEMORY_LIMIT_MB"] == "2500"  # request less the 500 MB overhead of the test settings
    assert seen["MY_VAR"] == "x"
    assert Path(seen["VRAMQ_OUTPUT_DIR"]).is_dir()
    body = client.get(f"/api/v1/jobs/{job['id']}", headers=auth).json()
    assert body["status"] == "succeeded" and body["exit_code"] == 0 and body["node"] == "node-a"


def test_jobs_too_big_to_share_never_run_together(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    jobs = [submit(client, auth, command=["sleep", "0.5"], vram_mb=5000) for _ in range(3)]

    for job in jobs:
        assert cluster.wait(job["id"]).status is JobStatus.SUCCEEDED
    with cluster.sessions() as session:
        runs = sorted(session.scalars(select(Run)).all(), key=lambda run: run.started_at)
    assert len(runs) == 3
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert earlier.released_at <= later.reserved_at  # one 5000 MB reservation on the 8 GiB GPU at a time
        assert earlier.finished_at <= later.started_at


def test_cancel_stops_the_whole_process_group(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    # The job starts a grandchild that ignores nothing and sleeps: cancel must reach it too.
    job = submit(client, auth, command=["sh", "-c", "sleep 300 & echo child $!; wait"])
    cluster.wait(job["id"], {JobStatus.RUNNING})
    time.sleep(0.5)
    runs = client.get(f"/api/v1/jobs/{job['id']}/runs", headers=auth).json()
    pgid = runs[0]["pid"]

    started = time.monotonic()
    response = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth)
    assert response.status_code == 202
    done = cluster.wait(job["id"], timeout=10)

    assert done.status is JobStatus.CANCELLED
    assert time.monotonic() - started < 10
    try:
        os.killpg(pgid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the job's process group outlived the cancel"
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth).json()["error"]["code"] == "job_finished"


def test_a_preempted_job_is_stopped_and_queued_again_without_using_a_retry(
    cluster: Cluster, client: TestClient, auth: dict[str, str]
) -> None:
    """The scheduler flags a running attempt for preemption (policy.preemptions), saying what for; its worker
    stops it and writes why in its log, and the job runs again as attempt 2 though it has no retries, as one
    that resumes from a checkpoint."""
    code = "import os, time; time.sleep(0 if os.environ['VRAMQ_ATTEMPT'] == '2' else 300)"
    job_id, first = preempt_once(
        cluster, client, auth, code, why="to make room for job 7, which would otherwise end last"
    )

    assert "preempted to make room for job 7, which would otherwise end last: queued again (no retry used)" in first
    assert not cluster.redis.exists(RUN_PREEMPT_KEY.format(job_id=job_id, attempt=1))


def preempt_once(
    cluster: Cluster, client: TestClient, auth: dict[str, str], code: str, why: str = "1"
) -> tuple[int, str]:
    """Run `code` as a job without retries, flag its first attempt for preemption once it runs (the flag's
    value: `why`), and check that the attempt ended preempted and a second one succeeded; the job's id and its
    first attempt's log."""
    job = submit(client, auth, command=py(code), max_retries=0)
    cluster.wait(job["id"], {JobStatus.RUNNING})
    time.sleep(0.5)  # a training job's progress report is written

    cluster.redis.set(RUN_PREEMPT_KEY.format(job_id=job["id"], attempt=1), why)
    done = cluster.wait(job["id"], timeout=30)

    assert (done.status, done.attempt) == (JobStatus.SUCCEEDED, 2)
    runs = client.get(f"/api/v1/jobs/{job['id']}/runs", headers=auth).json()
    assert [run["failure_reason"] for run in runs] == ["preempted", None]
    return job["id"], client.get(f"/api/v1/jobs/{job['id']}/logs?attempt=1", headers=auth).text


# A training job as the autolog hook makes it: it reports progress, and once asked to stop
# ($VRAMQ_STOP_FILE), finishes its epoch and exits with $VRAMQ_STOP_EXIT (or, NEVER_STOPS, goes on).
EPOCHS = """
import os, pathlib, sys, time
out = pathlib.Path(os.environ["VRAMQ_OUTPUT_DIR"]); out.mkdir(parents=True, exist_ok=True)
began = time.time() - 2  # its first epoch took 2 s: 8 left take 16 s
(out / "progress.json").write_text('{"done": 1, "total": 9, "start": 0, "began": %r}' % began)
if os.environ["VRAMQ_ATTEMPT"] == "2": sys.exit(0)
while not pathlib.Path(os.environ["VRAMQ_STOP_FILE"]).exists() or NEVER_STOPS:
    time.sleep(0.05)
time.sleep(0.5)
print("epoch 1 checkpointed", flush=True)
os._exit(int(os.environ["VRAMQ_STOP_EXIT"]))
"""


@pytest.mark.parametrize("stops", [True, False])
def test_a_preempted_training_job_finishes_its_epoch_first_or_is_stopped_after_the_grace(
    cluster: Cluster, client: TestClient, auth: dict[str, str], stops: bool
) -> None:
    """A job that checkpoints each epoch is asked to stop at its epoch's end (the stop file), losing no work,
    and is preempted when it exits so; one that does not exit within VRAMQ_PREEMPT_GRACE_S (3 s here) is
    stopped anyway."""
    job_id, first = preempt_once(cluster, client, auth, EPOCHS.replace("NEVER_STOPS", str(not stops)))

    # The flag was set by hand ("1"), not by the scheduler: the log names no job.
    assert "preempted to make room for another job: asked to stop at the end of its epoch" in first
    assert ("epoch 1 checkpointed" in first) is stops
    assert ("stopping the job: preempted" in first) is not stops
    # The scheduler plans its next attempt on the epochs left at its pace (inputs.pending_jobs).
    [left] = progress.resume_left(cluster.redis, [job_id]).values()
    assert 15 < left < 20


def test_queued_job_is_cancelled_at_once(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    blocker = submit(client, auth, command=["sleep", "30"], vram_mb=8000)
    waiting = submit(client, auth, command=["true"], vram_mb=8000)
    cluster.wait(blocker["id"], {JobStatus.RUNNING})

    cancelled = client.post(f"/api/v1/jobs/{waiting['id']}/cancel", headers=auth).json()

    assert cancelled["status"] == "cancelled"
    client.post(f"/api/v1/jobs/{blocker['id']}/cancel", headers=auth)
    assert cluster.wait(blocker["id"]).status is JobStatus.CANCELLED


def test_time_limit_ends_the_job_as_timeout(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    job = submit(client, auth, command=["sleep", "60"], time_limit_s=1)

    done = cluster.wait(job["id"], timeout=20)

    assert (done.status, done.failure_reason) == (JobStatus.FAILED, FailureReason.TIMEOUT)


def test_watchdog_kills_a_job_past_its_reservation(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    code = "import time, vramq_sim; vramq_sim.use(1500); time.sleep(30)"
    job = submit(client, auth, command=py(code), vram_mb=1000)

    done = cluster.wait(job["id"], timeout=20)

    assert (done.status, done.failure_reason) == (JobStatus.FAILED, FailureReason.CAP_EXCEEDED)
    assert done.peak_vram_mb == 1500


def test_peak_vram_is_recorded(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    job = submit(client, auth, command=py("import time, vramq_sim; vramq_sim.use(700); time.sleep(1)"))

    done = cluster.wait(job["id"])

    assert done.status is JobStatus.SUCCEEDED
    assert done.peak_vram_mb == 700
    assert client.get(f"/api/v1/jobs/{job['id']}/runs", headers=auth).json()[0]["peak_vram_mb"] == 700


def test_oom_is_classified_and_retried(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    code = (
        "import os, sys\n"
        "if os.environ['VRAMQ_ATTEMPT'] == '1':\n"
        "    sys.exit('tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating tensor')\n"
        "print('second attempt fine')\n"
    )
    job = submit(client, auth, command=py(code), max_retries=1)

    done = cluster.wait(job["id"])

    assert done.status is JobStatus.SUCCEEDED and done.attempt == 2
    runs = client.get(f"/api/v1/jobs/{job['id']}/runs", headers=auth).json()
    assert [(r["attempt"], r["outcome"], r["failure_reason"]) for r in runs] == [
        (1, "failed", "oom"),
        (2, "succeeded", None),
    ]
    assert "second attempt fine" in client.get(f"/api/v1/jobs/{job['id']}/logs", headers=auth).text
    first = client.get(f"/api/v1/jobs/{job['id']}/logs?attempt=1", headers=auth).text
    assert "ResourceExhaustedError" in first


def test_an_oom_grows_the_queued_jobs_alike_before_they_run(
    settings: Settings, sessions: sessionmaker[Session], redis: Redis, client: TestClient, auth: dict[str, str]
) -> None:
    """A sweep submitted with too small a request: once its first job runs out of memory, the queued jobs with
    the same command ask for its grown request and each runs once, instead of each failing in turn. A job
    with another command keeps its request."""
    code = (
        "import os, sys\n"
        "if int(os.environ['VRAMQ_VRAM_MB']) < 1500:\n"
        "    sys.exit('tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating tensor')\n"
    )
    cluster = Cluster(settings, sessions, redis)
    cluster.thread.start()
    try:
        cluster.start_node(slots=1)  # one job at a time: the first runs while the others wait
        sweep = [submit(client, auth, command=py(code), max_retries=1)["id"] for _ in range(3)]
        other = submit(client, auth, command=py("print('other')"))["id"]

        done = {job_id: cluster.wait(job_id) for job_id in [*sweep, other]}
    finally:
        cluster.close()

    assert all(job.status is JobStatus.SUCCEEDED for job in done.values())
    first, *alike = sweep
    assert (done[first].attempt, done[first].vram_mb) == (2, 1500)
    assert [(done[i].attempt, done[i].vram_mb) for i in alike] == [(1, 1500), (1, 1500)]
    assert (done[other].attempt, done[other].vram_mb) == (1, 1000)
    why = f"asks for 1500 MB, not 1000: job {first} with the same command ran out of memory inside 1000 MB"
    assert [done[i].warnings for i in alike] == [[why], [why]]
    assert done[first].warnings == done[other].warnings == []
    assert f"warning: {why}" in client.get(f"/api/v1/jobs/{alike[0]}/logs", headers=auth).text


def test_failure_without_retries_is_final(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    job = submit(client, auth, command=["sh", "-c", "echo broken >&2; exit 3"])

    done = cluster.wait(job["id"])

    assert (done.status, done.failure_reason, done.exit_code) == (JobStatus.FAILED, FailureReason.ERROR, 3)
    assert "broken" in client.get(f"/api/v1/jobs/{job['id']}/logs", headers=auth).text


def test_bad_command_is_a_launch_error(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    missing = submit(client, auth, command=["no-such-program-vramq"], max_retries=3)
    bad_dir = submit(client, auth, command=["true"], workdir="/no/such/dir")

    for job in (missing, bad_dir):
        done = cluster.wait(job["id"])
        assert (done.status, done.failure_reason) == (JobStatus.FAILED, FailureReason.LAUNCH_ERROR)
        assert done.attempt == 1  # another attempt could not fix it
    assert "no-such-program-vramq" in client.get(f"/api/v1/jobs/{missing['id']}/logs", headers=auth).text


def test_metrics_and_models_are_recorded(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    code = (
        "import json, os, pathlib, time\n"
        "out = pathlib.Path(os.environ['VRAMQ_OUTPUT_DIR'])\n"
        "(out / 'models').mkdir()\n"
        "with open(out / 'metrics.jsonl', 'a') as f:\n"
        "    for epoch in range(3):\n"
        "        row = {'epoch': epoch, 'loss': 1.0 / (epoch + 1), 'accuracy': 0.5 + epoch / 10}\n"
        "        f.write(json.dumps(row) + '\\n')\n"
        "        f.flush(); time.sleep(0.3)\n"
        "(out / 'models' / 'tiny.keras').write_bytes(b'weights' * 100)\n"
    )
    job = submit(client, auth, command=py(code))

    assert cluster.wait(job["id"]).status is JobStatus.SUCCEEDED

    metrics = client.get(f"/api/v1/jobs/{job['id']}/metrics", headers=auth).json()
    assert [(m["epoch"], m["name"]) for m in metrics if m["name"] == "loss"] == [(0, "loss"), (1, "loss"), (2, "loss")]
    assert {"attempt", "epoch", "name", "value", "time"} <= set(metrics[0])
    assert client.get("/api/v1/models", headers=auth).json() == [{"name": "tiny", "latest_version": 1}]
    [version] = client.get("/api/v1/models/tiny/versions", headers=auth).json()
    assert version["job_id"] == job["id"] and version["size_bytes"] == 700
    assert version["sha256"] == file_sha256(Path(version["path"]))
    assert version["metrics"]["loss"] == 1.0 / 3
    artifact = client.get("/api/v1/models/tiny/versions/1/artifact", headers=auth)
    assert artifact.content == b"weights" * 100


def test_foreign_memory_holds_jobs_back(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    import subprocess

    from worker.gpu.simulated import SimulatedBackend

    notebook = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        SimulatedBackend([8192], cluster.settings.simulator_dir).hold(notebook.pid, 0, 6000)
        time.sleep(1.5)  # a snapshot that sees it
        [gpu] = client.get("/api/v1/gpus", headers=auth).json()
        assert gpu["foreign_mb"] == 6000 and gpu["available_mb"] == 8192 - 6000
        job = submit(client, auth, command=["true"], vram_mb=5000)
        time.sleep(1.5)
        assert client.get(f"/api/v1/jobs/{job['id']}", headers=auth).json()["status"] == "queued"
    finally:
        notebook.kill()
        notebook.wait()
    assert cluster.wait(job["id"]).status is JobStatus.SUCCEEDED


def test_dead_node_makes_its_job_lost(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    job = submit(client, auth, command=["sleep", "60"])
    cluster.wait(job["id"], {JobStatus.RUNNING})
    [node] = cluster.nodes
    # Kill the agent, its workers and the job: the node vanishes as a crashed machine would.
    subprocess_group_kill(node.pid)

    done = cluster.wait(job["id"], timeout=40)

    assert (done.status, done.failure_reason) == (JobStatus.FAILED, FailureReason.LOST)
    with cluster.sessions() as session:
        [run] = session.scalars(select(Run).where(Run.job_id == job["id"])).all()
        assert run.released_at is not None


def test_a_killed_agent_takes_its_worker_slots_with_it(cluster: Cluster) -> None:
    """A slot that outlived its agent would go on taking the node's jobs (from a test run: every later
    test's jobs, with this test's settings, so they stayed dispatched)."""
    [node] = cluster.nodes
    agent = psutil.Process(node.pid)
    deadline = time.monotonic() + 20
    while len(slots := agent.children()) < cluster.settings.slots:
        assert time.monotonic() < deadline, f"{len(slots)} of {cluster.settings.slots} slots started"
        time.sleep(0.1)

    node.kill()
    node.wait()

    _, alive = psutil.wait_procs(slots, timeout=10)
    assert alive == [], f"slots outlived their agent: {[p.pid for p in alive]}"


def subprocess_group_kill(pid: int) -> None:
    parent = psutil.Process(pid)
    for process in [parent, *parent.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def test_logs_follow_streams_until_the_job_ends(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    code = "import time\nfor i in range(4):\n    print('line', i, flush=True)\n    time.sleep(0.4)\n"
    job = submit(client, auth, command=py(code))
    cluster.wait(job["id"], {JobStatus.RUNNING})

    with client.stream("GET", f"/api/v1/jobs/{job['id']}/logs?follow=true", headers=auth) as response:
        streamed = "".join(response.iter_text())

    assert [line for line in streamed.splitlines() if line.startswith("line")] == [f"line {i}" for i in range(4)]
    assert cluster.wait(job["id"]).status is JobStatus.SUCCEEDED


def test_a_dead_worker_leaves_no_orphan_holding_the_gpu(
    cluster: Cluster, client: TestClient, auth: dict[str, str]
) -> None:
    job = submit(client, auth, command=["sleep", "120"])
    cluster.wait(job["id"], {JobStatus.RUNNING})
    pgid = client.get(f"/api/v1/jobs/{job['id']}/runs", headers=auth).json()[0]["pid"]
    supervisor = psutil.Process(pgid).parent()  # the RQ work horse supervising the job
    supervisor.kill()

    done = cluster.wait(job["id"], timeout=40)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the orphaned job kept running after its worker died")
    assert (done.status, done.failure_reason) == (JobStatus.FAILED, FailureReason.LOST)


def test_logs_of_a_job_on_another_machine_come_from_the_workers_copy(
    cluster: Cluster, client: TestClient, auth: dict[str, str]
) -> None:
    code = "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.3)\n"
    job = submit(client, auth, command=py(code))
    assert cluster.wait(job["id"]).status is JobStatus.SUCCEEDED
    with cluster.sessions() as session:
        log_path = Path(session.scalars(select(Run.log_path).where(Run.job_id == job["id"])).one())
    whole = log_path.read_bytes()
    log_path.unlink()  # what an API on another machine sees: no such file

    copied = client.get(f"/api/v1/jobs/{job['id']}/logs", headers=auth).text
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/logs?follow=true", headers=auth) as response:
        followed = "".join(response.iter_text())

    assert copied == followed == whole.decode()
    assert [line for line in copied.splitlines() if line.startswith("line")] == ["line 0", "line 1", "line 2"]


def test_the_log_copy_follows_the_file_and_keeps_the_end_of_a_long_one(tmp_path: Path, redis: Redis) -> None:
    path = tmp_path / "log.txt"
    mirror = LogMirror(redis, 1, 1, path, limit=20)
    mirror.sync()  # no file yet: nothing to copy
    path.write_bytes(b"0123456789\n")
    mirror.sync()
    assert redis.get("vramq:log:1:1") == b"0123456789\n"
    assert 0 < redis.ttl("vramq:log:1:1") <= RUN_LOG_TTL_S

    with path.open("ab") as handle:
        handle.write(b"Traceback: the end\n")  # 30 bytes in all, over the limit: the newest 10 stay
    mirror.sync()
    run = Run(job_id=1, attempt=1, log_path=str(tmp_path / "elsewhere.txt"))

    assert redis.get("vramq:log:1:1") == b": the end\n"
    note = b"[vramq] 20 bytes of this log are kept only on the node that ran it\n"
    assert _read_log(redis, run, 0) == (note + b": the end\n", 30)  # file offsets: a follower goes on at 30
    assert _read_log(redis, run, 25) == (b" end\n", 30)
    assert _read_log(redis, run, 30) == (b"", 30)

    with path.open("ab") as handle:
        handle.write(b"x" * (RUN_LOG_KEEP_BYTES + 5))
    mirror.limit = RUN_LOG_MAX_BYTES
    mirror.sync()
    mirror.finish()  # the attempt ended: only the last RUN_LOG_KEEP_BYTES stay in Redis
    size = 30 + RUN_LOG_KEEP_BYTES + 5
    assert redis.strlen("vramq:log:1:1") == RUN_LOG_KEEP_BYTES
    note = f"[vramq] {size - RUN_LOG_KEEP_BYTES} bytes of this log are kept only on the node that ran it\n"
    assert _read_log(redis, run, 0) == (note.encode() + b"x" * RUN_LOG_KEEP_BYTES, size)
    mirror.finish()  # nothing new: the copy stays as it is
    assert redis.strlen("vramq:log:1:1") == RUN_LOG_KEEP_BYTES


def test_a_worker_meets_the_database_before_it_forks_and_keeps_no_connection(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """worker.task.prepare: each forked work horse inherits an engine whose dialect knows the server, and opens
    its own connections (one shared across a fork would interleave two processes' traffic)."""
    monkeypatch.setattr(task, "_prepared", None)
    down = settings.model_copy(update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:9/none"})
    task.prepare(down)  # a database that is down when the node starts: its jobs connect for themselves
    assert "database not reachable before the first job" in caplog.text

    task.prepare(settings)

    assert task._prepared is not None
    prepared_settings, engine = task._prepared
    assert prepared_settings is settings
    assert engine.dialect.server_version_info  # met the server: no work horse asks again
    assert engine.pool.checkedin() == engine.pool.checkedout() == 0
