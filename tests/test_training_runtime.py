"""Issue 3 through the whole stack: OOM-aware retry with resume, right-sizing, registry, retrain."""

import hashlib
from pathlib import Path

from fastapi.testclient import TestClient

from app.enums import JobStatus
from tests.conftest import Cluster
from tests.test_end_to_end import submit

OOM_UNTIL_1500 = """
import os, numpy as np, keras, tensorflow as tf
rng = np.random.default_rng(0)
x = rng.random((256, 8)).astype("float32"); y = (x.sum(1) > 4).astype("int32")

class TooSmall(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2 and int(os.environ["VRAMQ_VRAM_MB"]) < 1500:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[256,8]")

model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(2, activation="softmax")], name="grower")
model.compile("adam", "sparse_categorical_crossentropy")
model.fit(x, y, epochs=5, validation_split=0.25, verbose=0, callbacks=[TooSmall()])
"""


def test_oom_retries_with_a_larger_request_and_resumes(
    cluster: Cluster, client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "grow.py").write_text(OOM_UNTIL_1500)
    job = submit(client, auth, command=["python", "grow.py"], workdir=str(tmp_path), vram_mb=1000, max_retries=2)

    done = cluster.wait(job["id"], timeout=180)

    log = client.get(f"/api/v1/jobs/{job['id']}/logs", headers=auth).text
    assert done.status is JobStatus.SUCCEEDED, log
    runs = client.get(f"/api/v1/jobs/{job['id']}/runs", headers=auth).json()
    assert [(r["attempt"], r["vram_mb"], r["outcome"], r["failure_reason"]) for r in runs] == [
        (1, 1000, "failed", "oom"),
        (2, 1500, "succeeded", None),
    ]
    assert "resuming from the checkpoint of an earlier attempt at epoch 2" in log
    first_log = client.get(f"/api/v1/jobs/{job['id']}/logs?attempt=1", headers=auth).text
    assert "retrying with 1500 MB" in first_log
    metrics = client.get(f"/api/v1/jobs/{job['id']}/metrics", headers=auth).json()
    val_losses = [(m["attempt"], m["epoch"]) for m in metrics if m["name"] == "val_loss"]
    assert val_losses == [(1, 0), (1, 1), (2, 2), (2, 3), (2, 4)]  # epoch 2 of attempt 1 never finished
    [version] = client.get("/api/v1/models/grower/versions", headers=auth).json()
    assert version["attempt"] == 2 and version["spec"]["vram_mb"] == 1500


def test_other_failures_are_not_retried_unless_asked(
    cluster: Cluster, client: TestClient, auth: dict[str, str]
) -> None:
    plain = submit(client, auth, command=["sh", "-c", "exit 1"], max_retries=2)
    asked = submit(client, auth, command=["sh", "-c", 'test "$VRAMQ_ATTEMPT" = 2'], max_retries=2, retry_on=["error"])

    assert cluster.wait(plain["id"]).attempt == 1
    done = cluster.wait(asked["id"])
    assert (done.status, done.attempt) == (JobStatus.SUCCEEDED, 2)


def test_requests_are_right_sized_from_history(
    cluster: Cluster, client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "use.py").write_text("import time, vramq_sim\nvramq_sim.use(700)\ntime.sleep(0.6)\n")
    body = {"command": ["python", "use.py"], "workdir": str(tmp_path)}

    refused = client.post("/api/v1/jobs", json={**body, "vram_mb": "auto"}, headers=auth)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "no_vram_history"

    for _ in range(3):
        job = submit(client, auth, **body, vram_mb=2000)
        assert cluster.wait(job["id"]).peak_vram_mb == 700

    auto = submit(client, auth, **body, vram_mb="auto")
    assert auto["vram_mb"] == 700 + 256 and auto["suggested_vram_mb"] == 956
    wasteful = submit(client, auth, **body, vram_mb=5000)
    assert wasteful["warnings"] and "more than 2x" in wasteful["warnings"][0]
    cluster.wait(wasteful["id"])
    assert "more than 2x" in client.get(f"/api/v1/jobs/{wasteful['id']}/logs", headers=auth).text
    (tmp_path / "use.py").write_text("print('a different script')\n")
    changed = submit(client, auth, **body, vram_mb=1000)
    assert changed["suggested_vram_mb"] is None  # a new script content starts a new history


def test_registry_lineage_aliases_artifact_and_retrain(
    cluster: Cluster, client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    code = (
        "import json, os, pathlib, vramq_sim\n"
        "vramq_sim.use(600)\n"
        "out = pathlib.Path(os.environ['VRAMQ_OUTPUT_DIR'])\n"
        "(out / 'models').mkdir()\n"
        "rows = [{'epoch': 0, 'val_loss': 0.9}, {'epoch': 1, 'val_loss': 0.4}, {'epoch': 2, 'val_loss': 0.6}]\n"
        "(out / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\\n' for r in rows))\n"
        "import time; time.sleep(0.6)\n"
        "(out / 'models' / 'net.keras').write_bytes(os.urandom(4096))\n"
    )
    (tmp_path / "train.py").write_text(code)
    job = submit(client, auth, command=["python", "train.py"], workdir=str(tmp_path), vram_mb=3000, keras={"seed": 3})
    assert cluster.wait(job["id"]).status is JobStatus.SUCCEEDED

    [version] = client.get("/api/v1/models/net/versions", headers=auth).json()
    assert version["metrics"] == {"epoch": 1, "val_loss": 0.4}  # the best epoch, not the last
    assert version["spec"]["command"] == ["python", "train.py"] and version["spec"]["keras"] == {"seed": 3}
    assert version["peak_vram_mb"] == 600 and version["seed"] == 3 and version["gpu_seconds"] > 0

    artifact = client.get("/api/v1/models/net/versions/1/artifact", headers=auth)
    assert artifact.headers["content-length"] == "4096"
    assert artifact.headers["x-vramq-sha256"] == hashlib.sha256(artifact.content).hexdigest() == version["sha256"]

    assert client.put("/api/v1/models/net/aliases/production", json={"version": 1}, headers=auth).json() == {
        "name": "net",
        "alias": "production",
        "version": 1,
    }
    assert client.get("/api/v1/models/net/versions", headers=auth).json()[0]["aliases"] == ["production"]
    missing = client.put("/api/v1/models/net/aliases/production", json={"version": 9}, headers=auth)
    assert missing.status_code == 404
    assert client.delete("/api/v1/models/net/aliases/production", headers=auth).status_code == 204
    assert client.delete("/api/v1/models/net/aliases/production", headers=auth).json()["error"]["code"] == (
        "alias_not_found"
    )

    retrained = client.post("/api/v1/models/net/versions/1/retrain", headers=auth)
    assert retrained.status_code == 201
    again = retrained.json()
    assert again["command"] == ["python", "train.py"] and again["keras"] == {"seed": 3}
    assert again["vram_mb"] == 600 + 256  # right-sized from the first run's peak, not the 3000 asked then
    assert cluster.wait(again["id"]).status is JobStatus.SUCCEEDED


SLOW_PLAIN = """
import time, numpy as np, keras
x = np.random.rand(128, 4).astype("float32"); y = (x.sum(1) > 2).astype("int32")
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")], name="slow")
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=6, validation_split=0.25, verbose=0,
          callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: time.sleep(0.7))])
"""


def test_autolog_metrics_are_visible_while_the_job_runs(
    cluster: Cluster, client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "slow.py").write_text(SLOW_PLAIN)
    job = submit(client, auth, command=["python", "slow.py"], workdir=str(tmp_path))
    cluster.wait(job["id"], {JobStatus.RUNNING})

    seen_while_running = set()
    while client.get(f"/api/v1/jobs/{job['id']}", headers=auth).json()["status"] == "running":
        rows = client.get(f"/api/v1/jobs/{job['id']}/metrics", headers=auth).json()
        seen_while_running.add(len([m for m in rows if m["name"] == "loss"]))

    assert cluster.wait(job["id"]).status is JobStatus.SUCCEEDED
    assert any(0 < count < 6 for count in seen_while_running), seen_while_running
    rows = client.get(f"/api/v1/jobs/{job['id']}/metrics", headers=auth).json()
    for name in ("loss", "val_loss", "accuracy", "val_accuracy"):
        assert [m["epoch"] for m in rows if m["name"] == name] == [0, 1, 2, 3, 4, 5]
    assert client.get("/api/v1/models/slow/versions", headers=auth).json()[0]["job_id"] == job["id"]
