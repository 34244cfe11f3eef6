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
            utils = self._utilisation(handle)
            if utils is not None:
                for (pid, gpu), process in found.items():
                    if gpu == index:
                        found[pid, gpu] = replace(process, util=utils.get(pid, 0.0))
        return list(found.values())

    def _utilisation(self, handle: object) -> dict[int, float] | None:
        """Per-process SM utilisation: each process's newest sample in the driver's buffer. NVML lists only
        processes that were busy in it, so one on the GPU but not listed was idle (0), and NOT_FOUND means
        all were; None: this GPU cannot tell."""
        nvml = self._nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, 0)
        except AttributeError:
            return None
        except nvml.NVMLError as exc:
            return {} if getattr(exc, "value", None) == nvml.NVML_ERROR_NOT_FOUND else None
        newest: dict[int, float] = {}
        for sample in sorted(samples, key=lambda s: s.timeStamp):
            newest[sample.pid] = min(1.0, sample.smUtil / 100)
        return newest

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
