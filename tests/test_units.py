import pytest

from app.config import Settings
from app.enums import FailureReason, JobStatus
from app.units import parse_gpu_spec, parse_size_mb
from worker.launcher import framework_caps
from worker.outcome import Stopped, classify


@pytest.mark.parametrize(
    ("text", "mb"), [("24GiB", 24576), ("8000MiB", 8000), ("8000", 8000), ("1.5GiB", 1536), ("16g", 16384)]
)
def test_sizes(text: str, mb: int) -> None:
    assert parse_size_mb(text) == mb


def test_gpu_specs() -> None:
    assert parse_gpu_spec("2x24GiB") == [24576, 24576]
    assert parse_gpu_spec("1x8GiB,2x16GiB") == [8192, 16384, 16384]


@pytest.mark.parametrize("bad", ["", "x", "2x", "0x8GiB", "8 parsecs", "-1GiB"])
def test_bad_gpu_specs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_gpu_spec(bad)


def test_settings_refuse_a_bad_gpu_spec() -> None:
    with pytest.raises(ValueError):
        Settings(gpus="lots")


def test_framework_caps_are_the_request_less_overhead() -> None:
    caps = framework_caps(vram_mb=6000, overhead_mb=1000, gpu_total_mb=20000)

    assert caps["VRAMQ_TF_MEMORY_LIMIT_MB"] == "5000"
    assert caps["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert caps["PYTORCH_CUDA_ALLOC_CONF"] == "per_process_memory_fraction:0.2500"
    assert caps["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert caps["XLA_CLIENT_MEM_FRACTION"] == "0.2500"


@pytest.mark.parametrize(
    ("exit_code", "log", "stopped", "expected"),
    [
        (0, "", None, (JobStatus.SUCCEEDED, None)),
        (1, "Traceback ... ValueError", None, (JobStatus.FAILED, FailureReason.ERROR)),
        (
            1,
            "ResourceExhaustedError: OOM when allocating tensor with shape[1024]",
            None,
            (JobStatus.FAILED, FailureReason.OOM),
        ),
        (
            1,
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate",
            None,
            (JobStatus.FAILED, FailureReason.OOM),
        ),
        (
            1,
            "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory",
            None,
            (JobStatus.FAILED, FailureReason.OOM),
        ),
        (-15, "", Stopped.CANCELLED, (JobStatus.CANCELLED, None)),
        (-15, "", Stopped.TIMEOUT, (JobStatus.FAILED, FailureReason.TIMEOUT)),
        (-9, "", Stopped.CAP_EXCEEDED, (JobStatus.FAILED, FailureReason.CAP_EXCEEDED)),
    ],
)
def test_outcomes(exit_code: int, log: str, stopped: Stopped | None, expected: tuple) -> None:
    assert classify(exit_code, log, stopped) == expected


def test_a_job_cannot_override_its_gpus_or_caps(tmp_path) -> None:  # noqa: ANN001
    from worker.launcher import LaunchSpec, job_environment

    spec = LaunchSpec(
        job_id=1,
        attempt=1,
        command=[],
        workdir=None,
        output_dir=tmp_path,
        log_path=tmp_path / "log",
        env={"CUDA_VISIBLE_DEVICES": "0,1,2,3", "VRAMQ_TF_MEMORY_LIMIT_MB": "999999", "MINE": "kept"},
        vram_mb=4000,
        gpu_indices=[1],
        gpu_total_mb=8000,
        overhead_mb=1000,
    )

    env = job_environment(spec, {})

    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["VRAMQ_TF_MEMORY_LIMIT_MB"] == "3000" and env["MINE"] == "kept"
