"""What every GPU backend reports."""

from dataclasses import dataclass
from typing import Protocol


class GpuBackendError(Exception):
    """Raised when the GPUs cannot be read (no driver, NVML failure)."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    total_mb: int
    used_mb: int
    free_mb: int


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    gpu_index: int
    used_mb: int  # 0 when the driver cannot tell (NVML gives None inside some containers)
    util: float | None = None  # recent share of the GPU's compute it used, 0..1; None when unknown


class GpuBackend(Protocol):
    simulated: bool

    def gpus(self) -> list[GpuInfo]: ...

    def processes(self) -> list[GpuProcess]: ...

    def close(self) -> None: ...
