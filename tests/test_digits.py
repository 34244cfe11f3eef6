"""The README's quick start: the real Keras example trains through vramq and leaves a model version."""

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.enums import JobStatus
from app.services.models import file_sha256
from tests.conftest import Cluster


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """One real training run is enough: SQLite only (every SQL path also runs on PostgreSQL elsewhere)."""
    return f"sqlite:///{tmp_path / 'vramq.db'}"


def test_digits_example_trains_and_registers_its_model(
    cluster: Cluster, client: TestClient, auth: dict[str, str]
) -> None:
    body = {"command": ["python", "examples/digits.py", "--epochs", "4"], "vram_mb": 2000, "name": "digits"}
    job = client.post("/api/v1/jobs", json=body, headers=auth).json()

    done = cluster.wait(job["id"], timeout=240)

    log = client.get(f"/api/v1/jobs/{job['id']}/logs", headers=auth).text
    assert done.status is JobStatus.SUCCEEDED, log
    assert "test accuracy" in log
    # The script checkpoints and logs metrics itself: autolog adds no second model and no duplicate rows.
    assert client.get("/api/v1/models", headers=auth).json() == [{"name": "digits", "latest_version": 1}]
    [version] = client.get("/api/v1/models/digits/versions", headers=auth).json()
    assert version["job_id"] == job["id"] and version["sha256"] == file_sha256(Path(version["path"]))
    assert {"loss", "val_loss", "accuracy"} <= set(version["metrics"])
    losses = [m for m in client.get(f"/api/v1/jobs/{job['id']}/metrics", headers=auth).json() if m["name"] == "loss"]
    assert [m["epoch"] for m in losses] == [0, 1, 2, 3]
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, keras; print(keras.models.load_model(sys.argv[1]).output_shape)",
            version["path"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.stdout.strip() == "(None, 10)", loaded.stderr


def test_plain_keras_example_gets_autolog(cluster: Cluster, client: TestClient, auth: dict[str, str]) -> None:
    body = {"command": ["python", "examples/plain_keras.py"], "vram_mb": 2000}
    job = client.post("/api/v1/jobs", json=body, headers=auth).json()

    done = cluster.wait(job["id"], timeout=240)

    assert done.status is JobStatus.SUCCEEDED, client.get(f"/api/v1/jobs/{job['id']}/logs", headers=auth).text
    metrics = client.get(f"/api/v1/jobs/{job['id']}/metrics", headers=auth).json()
    assert [m["epoch"] for m in metrics if m["name"] == "val_loss"] == list(range(10))
    [version] = client.get("/api/v1/models/plain_digits/versions", headers=auth).json()
    assert {"val_loss", "val_accuracy"} <= set(version["metrics"])
