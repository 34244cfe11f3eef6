"""Starts a job's command in its own process group with the environment of DESIGN section 5."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from worker.hook import HOOK_DIR

# A job asked to stop at its next checkpoint (VRAMQ_STOP_FILE appears: a preemption) exits with this code
# once it has saved one: the Keras autolog hook does so right after an epoch's BackupAndRestore.
STOPPED_AT_CHECKPOINT = 75  # EX_TEMPFAIL
PYTHON_NAMES = frozenset({"python", "python3", f"python3.{sys.version_info.minor}"})


class LaunchError(Exception):
    """Raised when the command cannot be started (no such program, bad workdir)."""


@dataclass(frozen=True)
class LaunchSpec:
    job_id: int
    attempt: int
    command: list[str]
    env: dict[str, str]
    workdir: Path | None
    output_dir: Path
    log_path: Path
    vram_mb: int
    gpu_indices: list[int]
    gpu_total_mb: int  # the smallest assigned GPU's memory, for fraction-style caps
    overhead_mb: int
    simulator_dir: Path | None = None
    base_dir: Path | None = None  # where relative script paths fall back to (the node's start directory)
    keras: dict[str, object] | None = None  # autolog settings (seed, early_stopping, ...)
    resume_from: Path | None = None  # an earlier attempt's checkpoints, copied in before the start
    notes: tuple[str, ...] = ()  # written at the top of the log
    stop_file: Path | None = None  # appears when the job should stop at its next checkpoint


def framework_caps(vram_mb: int, overhead_mb: int, gpu_total_mb: int) -> dict[str, str]:
    """Per-framework memory caps: the request is the whole footprint, the allocator gets it less overhead."""
    allocator_mb = max(1, vram_mb - overhead_mb)
    fraction = min(1.0, allocator_mb / gpu_total_mb) if gpu_total_mb > 0 else 1.0
    return {
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "VRAMQ_TF_MEMORY_LIMIT_MB": str(allocator_mb),
        "PYTORCH_CUDA_ALLOC_CONF": f"per_process_memory_fraction:{fraction:.4f}",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_CLIENT_MEM_FRACTION": f"{fraction:.4f}",
    }


def job_environment(spec: LaunchSpec, inherited: dict[str, str]) -> dict[str, str]:
    env = {**inherited, **spec.env}
    python_path = [str(HOOK_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(
        VRAMQ_JOB_ID=str(spec.job_id),
        VRAMQ_ATTEMPT=str(spec.attempt),
        VRAMQ_OUTPUT_DIR=str(spec.output_dir),
        VRAMQ_VRAM_MB=str(spec.vram_mb),
        CUDA_VISIBLE_DEVICES=",".join(str(index) for index in spec.gpu_indices),
        PYTHONPATH=os.pathsep.join(python_path),
        PYTHONUNBUFFERED="1",
        **framework_caps(spec.vram_mb, spec.overhead_mb, spec.gpu_total_mb),
    )
    if spec.simulator_dir is not None:
        env["VRAMQ_SIM_DIR"] = str(spec.simulator_dir)
    if spec.stop_file is not None:
        env["VRAMQ_STOP_FILE"] = str(spec.stop_file)
        env["VRAMQ_STOP_EXIT"] = str(STOPPED_AT_CHECKPOINT)
    if spec.keras:
        env["VRAMQ_KERAS"] = json.dumps(spec.keras)
        if spec.keras.get("seed") is not None:
            env.setdefault("PYTHONHASHSEED", str(spec.keras["seed"]))
    return env


def resolve_command(command: list[str], workdir: Path, base_dir: Path | None) -> list[str]:
    """`python` runs on the worker's interpreter; a relative script missing from the workdir is looked
    for in the node's start directory (so `python examples/digits.py` works from a checkout)."""
    argv = list(command)
    if argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
        script = next((arg for arg in argv[1:] if not arg.startswith("-")), None)
        if (
            script
            and argv[1] == script
            and not Path(script).is_absolute()
            and not (workdir / script).exists()
            and base_dir is not None
            and (base_dir / script).exists()
        ):
            argv[1] = str(base_dir / script)
    return argv


def launch(spec: LaunchSpec, inherited: dict[str, str]) -> subprocess.Popen[bytes]:
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    notes = list(spec.notes)
    if spec.resume_from is not None:
        shutil.copytree(spec.resume_from, spec.output_dir / "checkpoints", dirs_exist_ok=True)
        notes.append(f"checkpoints of the earlier attempt copied from {spec.resume_from}")
    if spec.vram_mb <= spec.overhead_mb:
        notes.append(
            f"warning: {spec.vram_mb} MB is not more than the per-process overhead ({spec.overhead_mb} MB); "
            "a GPU framework will have almost nothing to allocate"
        )
    workdir = spec.workdir or spec.output_dir
    if not workdir.is_dir():
        raise LaunchError(f"workdir {workdir} does not exist on this node")
    argv = resolve_command(spec.command, workdir, spec.base_dir)
    with spec.log_path.open("ab") as log:
        log.write("".join(f"[vramq] {note}\n" for note in notes).encode())
        log.flush()
        try:
            return subprocess.Popen(
                argv,
                cwd=workdir,
                env=job_environment(spec, inherited),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cancel and cleanup reach every child
            )
        except OSError as exc:
            raise LaunchError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the whole process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


def stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the group, SIGKILL whatever is left after `grace_s`, and reap the leader."""
    pgid = process.pid
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process.poll() is not None and not group_alive(pgid):
            return
        time.sleep(0.05)
    signal_group(pgid, signal.SIGKILL)
    process.wait()
