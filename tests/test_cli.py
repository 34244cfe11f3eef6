"""The `vramq` command as admins and researchers run it: real processes against a real API."""

import subprocess
import sys
from pathlib import Path

import httpx
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
    (tmp_path / "hello.py").write_text("print('hello from', __import__('os').getcwd())\n")

    submitted = vramq(
        settings, "submit", "--vram", "1000", "--workdir", str(tmp_path), "--", "python", "hello.py", **client
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.split()[1])
    cluster.wait(job_id)

    assert "succeeded" in vramq(settings, "ls", **client).stdout
    assert f"hello from {tmp_path}" in vramq(settings, "logs", str(job_id), **client).stdout
    assert f"hello from {tmp_path}" in vramq(settings, "logs", "-f", str(job_id), **client).stdout
    assert '"outcome": "succeeded"' in vramq(settings, "show", str(job_id), **client).stdout
    assert "node-a:0" in vramq(settings, "gpus", **client).stdout
    refused = vramq(settings, "submit", "--vram", "99999", "--", "true", **client)
    assert refused.returncode == 1 and "vram_unsatisfiable" in refused.stderr
    finished = vramq(settings, "cancel", str(job_id), **client)
    assert finished.returncode == 1 and "job_finished" in finished.stderr
