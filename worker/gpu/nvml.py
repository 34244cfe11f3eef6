"""Real GPUs through NVML (nvidia-ml-py, imported as pynvml)."""

import contextlib
import logging
from dataclasses import replace
from typing import Any

from worker.gpu.base import GpuBackendError, GpuInfo, GpuProcess

log = logging.getLogger(__name__)
MIB = 1 << 20


class NvmlBackend:
    simulated = False

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - a dependency of vramq
            raise GpuBackendError("nvidia-ml-py is not installed") from exc
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as exc:
            raise GpuBackendError(f"NVML is not available: {exc}") from exc

    def gpus(self) -> list[GpuInfo]:
        nvml = self._nvml
        found = []
        for index, handle in enumerate(self._handles):
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                found.append(
                    GpuInfo(
                        index=index,
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        total_mb=memory.total // MIB,
                        used_mb=memory.used // MIB,
                        free_mb=memory.free // MIB,
                    )
                )
            except nvml.NVMLError as exc:
                log.warning("NVML could not read GPU %d: %s", index, exc)
        return found

    def processes(self) -> list[GpuProcess]:
        nvml = self._nvml
        found: dict[tuple[int, int], GpuProcess] = {}
        for index, handle in enumerate(self._handles):
            for query in (
                nvml.nvmlDeviceGetComputeRunningProcesses,
                nvml.nvmlDeviceGetGraphicsRunningProcesses,
            ):
                try:
                    infos = query(handle)
                except nvml.NVMLError as exc:
                    log.debug("NVML process query failed on GPU %d: %s", index, exc)
                    continue
                for info in infos:
                    used = info.usedGpuMemory
                    found[info.pid, index] = GpuProcess(info.pid, index, used // MIB if used else 0)
            for pid, util in self._utilisation(handle).items():
                if (pid, index) in found:
                    found[pid, index] = replace(found[pid, index], util=util)
        return list(found.values())

    def _utilisation(self, handle: object) -> dict[int, float]:
        """Per-process SM utilisation over the driver's recent samples (not every GPU supports it)."""
        nvml = self._nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, 0)
        except (nvml.NVMLError, AttributeError):
            return {}
        return {sample.pid: min(1.0, sample.smUtil / 100) for sample in samples}

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
