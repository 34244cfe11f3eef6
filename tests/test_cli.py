"""The `vramq` command as admins and researchers run it: real processes against a real API."""

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from app.config import Settings
from tests.conftest import REPO, Cluster, settings_env, start_api


def vramq(settings: Settings, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**settings_env(settings), **extra_env}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_user_add_prints_the_token_alone_on_its_last_line(settings: Settings, api_url: str) -> None:
    created = vramq(settings, "user", "add", "erin", "--admin")
    again = vramq(settings, "user", "add", "erin")

    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert " " not in token and len(token) >= 32
    me = httpx.get(f"{api_url}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert again.returncode == 1 and "already exists" in again.stderr


def test_node_refuses_to_start_without_gpus(settings: Settings) -> None:
    result = vramq(settings.model_copy(update={"gpus": None}), "node")

    assert result.returncode == 2
    assert "VRAMQ_GPUS" in result.stderr


@pytest.mark.parametrize("access_log", [False, True])
def test_the_api_logs_each_request_only_when_asked(settings: Settings, access_log: bool) -> None:
    settings = settings.model_copy(update={"access_log": access_log})
    server, _ = start_api(settings, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server.terminate()  # /healthz has answered
    output, _ = server.communicate(timeout=10)
    assert "Application startup complete" in output  # the server's own log is there either way
    assert ("GET /healthz" in output) is access_log


def test_researcher_commands(settings: Settings, api_url: str, cluster: Cluster, tmp_path: Path) -> None:
    token = vramq(settings, "user", "add", "frank").stdout.strip().splitlines()[-1]
    client = {"VRAMQ_API_URL": api_url, "VRAMQ_TOKEN": token}
    (tmp_path / "hello.py").write_text("import os; print(os.environ['GREETING'], 'from', os.getcwd())\n")

    options = ["--vram", "1GiB", "-e", "GREETING=hello=hi", "--retry-on", "error", "--workdir", str(tmp_path)]
    submitted = vramq(settings, "submit", *options, "--", "python", "hello.py", **client)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.split()[1])
    cluster.wait(job_id)

    assert "succeeded" in vramq(settings, "ls", **client).stdout
    assert f"hello=hi from {tmp_path}" in vramq(settings, "logs", str(job_id), **client).stdout
    shown = json.loads(vramq(settings, "show", str(job_id), **client).stdout)
    assert shown["vram_mb"] == 1024 and shown["retry_on"] == ["error"]
    assert f"hello=hi from {tmp_path}" in vramq(settings, "logs", "-f", str(job_id), **client).stdout
    assert '"outcome": "succeeded"' in vramq(settings, "show", str(job_id), **client).stdout
    assert "node-a:0" in vramq(settings, "gpus", **client).stdout
    refused = vramq(settings, "submit", "--vram", "99999", "--", "true", **client)
    assert refused.returncode == 1 and "vram_unsatisfiable" in refused.stderr
    finished = vramq(settings, "cancel", str(job_id), **client)
    assert finished.returncode == 1 and "job_finished" in finished.stderr


def test_the_cli_says_why_a_job_waits_and_passes_on_warnings(
    settings: Settings, api_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    token = vramq(settings, "user", "add", "gina").stdout.strip().splitlines()[-1]
    client = {"VRAMQ_API_URL": api_url, "VRAMQ_TOKEN": token}
    (tmp_path / "small.py").write_text("import time, vramq_sim; vramq_sim.use(300); time.sleep(1)\n")
    small = ["--workdir", str(tmp_path), "--", "python", "small.py"]
    first = vramq(settings, "submit", "--vram", "1000", *small, **client)
    cluster.wait(int(first.stdout.split()[1]))  # a history: it peaked at 300 MB

    blocker = vramq(settings, "submit", "--vram", "6000", "--time-limit", "60", "--", "sleep", "30", **client)
    oversized = vramq(settings, "submit", "--vram", "4000", *small, **client)
    waiting_id = oversized.stdout.split()[1]
    deadline = time.monotonic() + 10
    while "waiting: needs" not in (listed := vramq(settings, "ls", **client).stdout) and time.monotonic() < deadline:
        time.sleep(0.2)

    assert "more than 2x what earlier runs of this job needed" in oversized.stderr
    assert oversized.stderr.startswith("warning: 4000 MB requested")
    rows = listed.splitlines()
    waiting_line = rows[rows.index(next(r for r in rows if r.lstrip().startswith(waiting_id))) + 1]
    assert waiting_line.lstrip().startswith("waiting: needs 4000 MB on one GPU; most available now: 2192 MB")
    assert "(estimated start " in waiting_line  # the blocker's time limit dates it
    for job_id in (blocker.stdout.split()[1], waiting_id):
        vramq(settings, "cancel", job_id, **client)
    auto = vramq(settings, "submit", "--vram", "auto", *small, **client)
    shown = json.loads(vramq(settings, "show", auto.stdout.split()[1], **client).stdout)
    assert shown["vram_mb"] == shown["suggested_vram_mb"] < 1000  # from the 300 MB peak


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--vram", "lots"], "not a memory size: 'lots'"), (["--vram", "100", "-e", "FOO"], "expected KEY=VALUE")],
)
def test_submit_options_are_checked_before_anything_is_sent(
    settings: Settings, option: list[str], message: str
) -> None:
    nowhere = {"VRAMQ_API_URL": "http://127.0.0.1:9", "VRAMQ_TOKEN": "x"}  # sending would fail "cannot reach"
    result = vramq(settings, "submit", *option, "--", "true", **nowhere)

    assert result.returncode == 2 and message in result.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_up_runs_a_job_and_stops_everything_when_one_part_dies(settings: Settings) -> None:
    """`make run`: API, scheduler and node in one command; one of them dying stops the rest, saying which."""
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    up, url = start_api(settings.model_copy(update={"gpus": "1x8GiB"}), "up", **pipes)
    try:
        deadline = time.monotonic() + 30
        token = vramq(settings, "user", "add", "hana").stdout.strip().splitlines()[-1]
        headers = {"Authorization": f"Bearer {token}"}
        job = httpx.post(f"{url}/api/v1/jobs", json={"command": ["true"], "vram_mb": 100}, headers=headers).json()
        while (status := httpx.get(f"{url}/api/v1/jobs/{job['id']}", headers=headers).json()["status"]) != "succeeded":
            assert time.monotonic() < deadline and status not in ("failed", "cancelled"), status
            time.sleep(0.2)

        parts = psutil.Process(up.pid).children(recursive=True)
        [scheduler] = [p for p in parts if p.cmdline()[-1:] == ["scheduler"]]
        scheduler.kill()
        _, stderr = up.communicate(timeout=30)

        assert up.returncode == 1
        assert "vramq up: the scheduler was killed by SIGKILL; stopping everything" in stderr
        assert not [p for p in parts if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        if up.poll() is None:
            up.kill()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_up_killed_leaves_nothing_running(settings: Settings) -> None:
    """`vramq up` killed outright (no chance to stop its parts): API, scheduler, node agent and the node's
    RQ slots all end with it, so no slot goes on taking the node's jobs for nobody."""
    up, _ = start_api(settings.model_copy(update={"gpus": "1x8GiB"}), "up", stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while len(parts := psutil.Process(up.pid).children(recursive=True)) < 3 + settings.slots:
            assert time.monotonic() < deadline, [p.cmdline() for p in parts]
            time.sleep(0.1)
    finally:
        up.kill()
        up.wait()

    _, alive = psutil.wait_procs(parts, timeout=30)

    assert alive == [], [p.cmdline() for p in alive]
