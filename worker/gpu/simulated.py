"""Simulated GPUs (VRAMQ_GPUS=2x24GiB): real processes, memory they declare in files.

A process 'uses' simulated memory by writing `<dir>/<pid>.json` = {"gpu": index, "mb": n}; the file of
a process that has exited no longer counts. Jobs do it through `vramq_sim.use(mb)` (on their
PYTHONPATH), tests declare foreign processes with `SimulatedBackend.hold`.
"""

import json
import os
from pathlib import Path

from worker.gpu.base import GpuInfo, GpuProcess


class SimulatedBackend:
    simulated = True

    def __init__(self, sizes_mb: list[int], directory: Path) -> None:
        self.sizes_mb = sizes_mb
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def hold(self, pid: int, gpu_index: int, mb: int, util: float | None = None) -> None:
        """Declare that `pid` holds `mb` on `gpu_index` (for as long as it lives), using `util` of its compute."""
        path = self.directory / f"{pid}.{gpu_index}.json"
        path.write_text(json.dumps({"gpu": gpu_index, "mb": mb, "util": util}))

    def processes(self) -> list[GpuProcess]:
        found = []
        for path in self.directory.glob("*.json"):
            pid = int(path.name.split(".", 1)[0])
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being written
            if not _alive(pid):
                path.unlink(missing_ok=True)
                continue
            util = record.get("util")
            found.append(
                GpuProcess(pid, int(record["gpu"]), int(record["mb"]), float(util) if util is not None else None)
            )
        return found

    def gpus(self) -> list[GpuInfo]:
        used = [0] * len(self.sizes_mb)
        for process in self.processes():
            if process.gpu_index < len(used):
                used[process.gpu_index] += process.used_mb
        return [
            GpuInfo(
                index=index,
                uuid=f"GPU-simulated-{index}",
                name=f"Simulated GPU {total // 1024} GiB",
                total_mb=total,
                used_mb=min(used[index], total),
                free_mb=max(0, total - used[index]),
            )
            for index, total in enumerate(self.sizes_mb)
        ]

    def close(self) -> None:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited: its memory is free.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
