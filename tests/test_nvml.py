"""The NVML backend against a stand-in `pynvml` module (no NVIDIA driver here)."""

import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from worker.gpu.base import GpuBackendError, GpuProcess
from worker.gpu.nvml import NvmlBackend

MIB = 1 << 20


NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NOT_FOUND = 3, 6


class NVMLError(Exception):
    def __init__(self, value: object) -> None:
        super().__init__(value)
        self.value = value  # as pynvml's: the NVML return code


@dataclass
class Memory:
    total: int
    used: int
    free: int


@dataclass
class ProcessInfo:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 - NVML's name


@dataclass
class UtilSample:
    pid: int
    smUtil: int  # noqa: N815 - NVML's name
    timeStamp: int  # noqa: N815


def fake_pynvml(
    *,
    fail_init: bool = False,
    fail_processes_on: int | None = None,
    utilisation: dict[int, list[UtilSample] | int] | None = None,
) -> types.ModuleType:
    """Two GPUs; `utilisation`: per GPU, its process utilisation samples or the error code NVML gives
    (without it, the library predates the call)."""
    module = types.ModuleType("pynvml")
    devices = [
        {
            "name": b"NVIDIA H100 80GB HBM3",
            "uuid": "GPU-aaa",
            "mem": Memory(81559 * MIB, 2000 * MIB, 79559 * MIB),
            "compute": [ProcessInfo(100, 1500 * MIB), ProcessInfo(101, None)],
            "graphics": [],
        },
        {
            "name": "NVIDIA A10",
            "uuid": "GPU-bbb",
            "mem": Memory(23028 * MIB, 0, 23028 * MIB),
            "compute": [],
            "graphics": [ProcessInfo(200, 300 * MIB)],
        },
    ]

    def init() -> None:
        if fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    def compute(handle: int) -> list[ProcessInfo]:
        if handle == fail_processes_on:
            raise NVMLError("Not Supported")
        return devices[handle]["compute"]

    def process_utilisation(handle: int, last_seen: int) -> list[UtilSample]:
        assert utilisation is not None and last_seen == 0
        found = utilisation[handle]
        if isinstance(found, int):
            raise NVMLError(found)
        return found

    if utilisation is not None:
        module.nvmlDeviceGetProcessUtilization = process_utilisation  # type: ignore[attr-defined]
    module.NVML_ERROR_NOT_FOUND = NVML_ERROR_NOT_FOUND  # type: ignore[attr-defined]
    module.NVMLError = NVMLError  # type: ignore[attr-defined]
    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda h: devices[h]["mem"]  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda h: devices[h]["name"]  # type: ignore[attr-defined]
    module.nvmlDeviceGetUUID = lambda h: devices[h]["uuid"]  # type: ignore[attr-defined]
    module.nvmlDeviceGetComputeRunningProcesses = compute  # type: ignore[attr-defined]
    module.nvmlDeviceGetGraphicsRunningProcesses = lambda h: devices[h]["graphics"]  # type: ignore[attr-defined]
    return module


@pytest.fixture
def install() -> Iterator:
    saved = sys.modules.get("pynvml")

    def put(module: types.ModuleType) -> None:
        sys.modules["pynvml"] = module

    yield put
    if saved is None:
        sys.modules.pop("pynvml", None)
    else:
        sys.modules["pynvml"] = saved


def test_reads_every_gpu(install) -> None:  # noqa: ANN001
    install(fake_pynvml())

    gpus = NvmlBackend().gpus()

    assert [(g.index, g.uuid, g.name, g.total_mb, g.used_mb, g.free_mb) for g in gpus] == [
        (0, "GPU-aaa", "NVIDIA H100 80GB HBM3", 81559, 2000, 79559),
        (1, "GPU-bbb", "NVIDIA A10", 23028, 0, 23028),
    ]


def test_processes_with_unknown_memory_count_zero(install) -> None:  # noqa: ANN001
    install(fake_pynvml())

    assert sorted(NvmlBackend().processes(), key=lambda p: p.pid) == [
        GpuProcess(100, 0, 1500),
        GpuProcess(101, 0, 0),
        GpuProcess(200, 1, 300),
    ]


def test_missing_driver_is_a_clear_error(install) -> None:  # noqa: ANN001
    install(fake_pynvml(fail_init=True))

    with pytest.raises(GpuBackendError, match="NVML is not available"):
        NvmlBackend()


def test_a_failing_query_is_skipped_not_fatal(install) -> None:  # noqa: ANN001
    install(fake_pynvml(fail_processes_on=0))

    assert NvmlBackend().processes() == [GpuProcess(200, 1, 300)]


def test_each_process_gets_its_newest_utilisation_sample_and_an_idle_one_zero(install) -> None:  # noqa: ANN001
    samples = [UtilSample(100, 40, timeStamp=2_000), UtilSample(100, 90, timeStamp=1_000)]
    install(fake_pynvml(utilisation={0: samples, 1: NVML_ERROR_NOT_FOUND}))

    utils = {p.pid: p.util for p in NvmlBackend().processes()}

    assert utils == {100: 0.4, 101: 0.0, 200: 0.0}  # 101 absent from the samples, GPU 1 had none: idle


def test_a_gpu_that_cannot_tell_utilisation_leaves_it_unknown(install) -> None:  # noqa: ANN001
    install(fake_pynvml(utilisation={0: NVML_ERROR_NOT_SUPPORTED, 1: [UtilSample(200, 70, timeStamp=5)]}))

    utils = {p.pid: p.util for p in NvmlBackend().processes()}

    assert utils == {100: None, 101: None, 200: 0.7}
