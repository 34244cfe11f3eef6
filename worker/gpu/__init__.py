"""GPU backends: the one interface around what we don't own (NVML) and its simulated twin."""

from app.config import Settings
from worker.gpu.base import GpuBackend, GpuBackendError, GpuInfo, GpuProcess


def make_backend(settings: Settings) -> GpuBackend:
    """Simulated GPUs when VRAMQ_GPUS is set, else NVML (which raises GpuBackendError without a driver)."""
    if settings.simulated_gpus_mb is not None:
        from worker.gpu.simulated import SimulatedBackend

        return SimulatedBackend(settings.simulated_gpus_mb, settings.simulator_dir)
    from worker.gpu.nvml import NvmlBackend

    return NvmlBackend()


__all__ = ["GpuBackend", "GpuBackendError", "GpuInfo", "GpuProcess", "make_backend"]
