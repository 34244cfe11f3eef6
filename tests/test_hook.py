"""The TensorFlow start-up hook, against a stand-in `tensorflow` package that records every call
(we cannot have a GPU here; the real TensorFlow is exercised by the digits end-to-end test)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker.launcher import LaunchSpec, job_environment

FAKE_TF = """
CALLS = []
FAIL = {fail!r}

class LogicalDeviceConfiguration:
    def __init__(self, memory_limit=None):
        self.memory_limit = memory_limit

class _Config:
    LogicalDeviceConfiguration = LogicalDeviceConfiguration

    def list_physical_devices(self, kind=None):
        CALLS.append(["list", kind])
        return ["/physical_device:GPU:0", "/physical_device:GPU:1"] if kind == "GPU" else []

    def set_logical_device_configuration(self, device, configurations):
        if FAIL:
            raise RuntimeError("Virtual devices cannot be modified after being initialized")
        CALLS.append(["logical", device, [c.memory_limit for c in configurations]])

    def set_memory_growth(self, device, enable):
        CALLS.append(["growth", device, enable])

config = _Config()

def constant(value):
    CALLS.append(["op", "constant"])
    return value
"""

SCRIPT = "import json, tensorflow as tf; tf.constant(1); print(json.dumps(tf.CALLS))"


def run_job_python(
    tmp_path: Path, *, vram_mb: int, overhead_mb: int, fail: bool = False
) -> subprocess.CompletedProcess:
    package = tmp_path / "site" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(FAKE_TF.format(fail=fail)))
    spec = LaunchSpec(
        job_id=1,
        attempt=1,
        command=[],
        env={"PYTHONPATH": str(tmp_path / "site")},
        workdir=None,
        output_dir=tmp_path,
        log_path=tmp_path / "log",
        vram_mb=vram_mb,
        gpu_indices=[0, 1],
        gpu_total_mb=24576,
        overhead_mb=overhead_mb,
    )
    env = job_environment(spec, {"PATH": "/usr/bin:/bin"})
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)


def test_limit_is_set_on_every_gpu_before_any_op(tmp_path: Path) -> None:
    result = run_job_python(tmp_path, vram_mb=6000, overhead_mb=1000)

    assert result.returncode == 0, result.stderr
    calls = json.loads(result.stdout)
    assert calls == [
        ["list", "GPU"],
        ["logical", "/physical_device:GPU:0", [5000]],
        ["logical", "/physical_device:GPU:1", [5000]],
        ["op", "constant"],
    ]
    assert "memory limit 5000 MB" in result.stderr


def test_growth_comes_from_the_environment_not_set_memory_growth(tmp_path: Path) -> None:
    result = run_job_python(tmp_path, vram_mb=4000, overhead_mb=500)

    assert not [call for call in json.loads(result.stdout) if call[0] == "growth"]


def test_a_failing_hook_never_breaks_the_script(tmp_path: Path) -> None:
    result = run_job_python(tmp_path, vram_mb=4000, overhead_mb=500, fail=True)

    assert result.returncode == 0
    assert json.loads(result.stdout) == [["list", "GPU"], ["op", "constant"]]
    assert "could not set up tensorflow" in result.stderr


@pytest.mark.parametrize("existing", [True, False])
def test_the_environments_own_sitecustomize_still_runs(tmp_path: Path, existing: bool) -> None:
    site = tmp_path / "site"
    site.mkdir()
    if existing:
        (site / "sitecustomize.py").write_text("import os\nos.environ['THEIRS'] = 'ran'\n")
    spec = LaunchSpec(
        job_id=1,
        attempt=1,
        command=[],
        env={"PYTHONPATH": str(site)},
        workdir=None,
        output_dir=tmp_path,
        log_path=tmp_path / "log",
        vram_mb=2000,
        gpu_indices=[0],
        gpu_total_mb=8192,
        overhead_mb=500,
    )
    code = "import os; print(os.environ.get('THEIRS', 'none'))"
    env = job_environment(spec, {"PATH": "/usr/bin:/bin"})
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)

    assert result.stdout.strip() == ("ran" if existing else "none")


def test_hook_uses_only_the_standard_library() -> None:
    import ast

    from worker.hook import HOOK_DIR

    allowed = set(sys.stdlib_module_names) | {path.stem for path in HOOK_DIR.glob("*.py")}
    for path in HOOK_DIR.glob("*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {
            node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        }
        assert imported <= allowed, f"{path.name} imports {imported - allowed}"
