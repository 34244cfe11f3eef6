"""Keras autolog in the start-up hook, with the real Keras (TensorFlow on the CPU) in a job environment."""

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from worker.launcher import STOPPED_AT_CHECKPOINT, LaunchSpec, job_environment

DATA = """
import numpy as np, keras
rng = np.random.default_rng(0)
x = rng.random((256, 8)).astype("float32"); y = (x.sum(1) > 4).astype("int32")
"""


def run_script(
    tmp_path: Path, code: str, *, keras: dict | None = None, attempt: int = 1, stop_file: Path | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    output = tmp_path / f"attempt-{attempt}"
    output.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(DATA) + textwrap.dedent(code))
    spec = LaunchSpec(
        job_id=1,
        attempt=attempt,
        command=[],
        env={},
        workdir=None,
        output_dir=output,
        log_path=tmp_path / "log",
        vram_mb=2000,
        gpu_indices=[0],
        gpu_total_mb=8192,
        overhead_mb=500,
        keras=keras,
        stop_file=stop_file,
    )
    env = job_environment(spec, {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    result = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=REPO, capture_output=True, text=True, timeout=180
    )
    return result, output


def metric_rows(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def load_model_output_shape(path: Path) -> str:
    code = "import sys, keras; print(keras.models.load_model(sys.argv[1]).output_shape)"
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    return result.stdout.strip()


def test_an_unmodified_script_gets_metrics_best_model_and_keeps_its_callbacks(tmp_path: Path) -> None:
    launched = time.time()
    result, output = run_script(
        tmp_path,
        """
        seen = []
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(2, activation="softmax")], name="plain")
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=4, validation_split=0.25, verbose=0,
                  callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))])
        print("user callback saw", seen)
    """,
    )

    assert result.returncode == 0, result.stderr
    assert "user callback saw [0, 1, 2, 3]" in result.stdout
    rows = metric_rows(output)
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(rows[0])
    report = json.loads((output / "progress.json").read_text())
    assert {key: report[key] for key in ("done", "total", "start")} == {"done": 4, "total": 4, "start": 0}
    assert launched < report["began"] < (output / "progress.json").stat().st_mtime  # the fit's start, not the process's
    assert sorted(p.name for p in (output / "models").iterdir()) == ["plain.keras"]
    assert load_model_output_shape(output / "models" / "plain.keras") == "(None, 2)"
    assert not list((output / "checkpoints").rglob("*.h5"))  # a finished fit leaves no resume checkpoint


def test_functional_and_subclassed_models_and_several_fits(tmp_path: Path) -> None:
    result, output = run_script(
        tmp_path,
        """
        inputs = keras.Input((8,))
        functional = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs), name="functional_net")
        functional.compile("adam", "sparse_categorical_crossentropy")
        functional.fit(x, y, epochs=2, verbose=0)

        class Net(keras.Model):
            def __init__(self):
                super().__init__(name="subclassed_net")
                self.dense = keras.layers.Dense(2, activation="softmax")
            def call(self, inputs):
                return self.dense(inputs)

        net = Net()
        net.compile("adam", "sparse_categorical_crossentropy")
        net.fit(x, y, epochs=3, verbose=0)
        print("trained both")
    """,
    )

    assert result.returncode == 0, result.stderr
    assert "trained both" in result.stdout
    assert [row["epoch"] for row in metric_rows(output)] == [0, 1, 2, 3, 4]  # epochs continue across fits
    assert (output / "models" / "functional_net.keras").exists()


def test_keras_settings_apply_seed_and_callbacks(tmp_path: Path) -> None:
    code = """
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=20, validation_split=0.25, verbose=0)
    """
    settings = {"seed": 7, "early_stopping": {"patience": 0, "min_delta": 10.0}}
    first, out_first = run_script(tmp_path / "a", code, keras=settings)
    second, out_second = run_script(tmp_path / "b", code, keras=settings)

    assert first.returncode == 0 and second.returncode == 0, first.stderr
    assert "random seed 7" in first.stderr
    rows = metric_rows(out_first)
    assert len(rows) == 2  # early stopping: no epoch improves by 10
    assert rows == metric_rows(out_second)  # the seed makes runs repeatable


def test_a_broken_autolog_setting_never_breaks_training(tmp_path: Path) -> None:
    result, _ = run_script(
        tmp_path,
        """
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=2, verbose=0)
        print("finished")
    """,
        keras={"early_stopping": {"no_such_argument": 1}},
    )

    assert result.returncode == 0, result.stderr
    assert "finished" in result.stdout
    assert "autolog is off for this fit" in result.stderr


@pytest.mark.parametrize("same_model", [True, False])
def test_resume_from_an_earlier_attempt(tmp_path: Path, same_model: bool) -> None:
    crash = f"""
        import os
        class Crash(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 2 and os.environ["VRAMQ_ATTEMPT"] == "1":
                    raise SystemExit("OOM when allocating tensor")
        width = 8 if os.environ["VRAMQ_ATTEMPT"] == "1" or {same_model} else 16
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(width, activation="relu"),
                                  keras.layers.Dense(2, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=5, verbose=0, callbacks=[Crash()])
        print("iterations", int(model.optimizer.iterations.numpy()))
    """
    first, _ = run_script(tmp_path, crash, attempt=1)
    assert first.returncode != 0
    shutil.copytree(tmp_path / "attempt-1" / "checkpoints", tmp_path / "attempt-2" / "checkpoints")
    second, output = run_script(tmp_path, crash, attempt=2)

    assert second.returncode == 0, second.stderr
    epochs = [row["epoch"] for row in metric_rows(output)]
    if same_model:
        assert "resuming from the checkpoint of an earlier attempt at epoch 2" in second.stderr
        assert epochs == [2, 3, 4]
        # this attempt's own work began at epoch 2: the scheduler times only that
        report = json.loads((output / "progress.json").read_text())
        assert (report["done"], report["total"], report["start"]) == (5, 5, 2)
        assert "iterations 40" in second.stdout  # 8 steps x 5 epochs: the optimizer state came back too
    else:
        assert "does not match this model" in second.stderr and "starting over" in second.stderr
        assert epochs == [0, 1, 2, 3, 4]


def test_a_preempted_fit_stops_once_its_epoch_is_checkpointed_and_the_next_attempt_goes_on(tmp_path: Path) -> None:
    """Asked to stop (the stop file exists), the fit ends after its first epoch, checkpoint saved, with the
    code the worker takes for a preemption; the next attempt resumes at epoch 1: no epoch is lost."""
    code = """
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=4, verbose=0)
        print("fit returned")
    """
    stop = tmp_path / "stop"
    stop.touch()
    first, output = run_script(tmp_path, code, attempt=1, stop_file=stop)

    assert first.returncode == STOPPED_AT_CHECKPOINT, first.stderr
    assert "stopping after epoch 0 (preempted)" in first.stderr and "fit returned" not in first.stdout
    assert [row["epoch"] for row in metric_rows(output)] == [0]
    shutil.copytree(output / "checkpoints", tmp_path / "attempt-2" / "checkpoints")
    second, output = run_script(tmp_path, code, attempt=2)
    assert second.returncode == 0, second.stderr
    assert [row["epoch"] for row in metric_rows(output)] == [1, 2, 3]
