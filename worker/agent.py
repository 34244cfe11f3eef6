"""The node agent (`vramq node`): publishes GPU snapshots and keeps the node's RQ workers running."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
from redis import Redis

from app.config import Settings
from app.constants import NODE_PGIDS_KEY, RUN_HEARTBEAT_KEY, SNAPSHOT_INTERVAL_S
from app.lifetime import ending_with_me
from app.services.nodes import GpuProcessInfo, GpuSnapshot, NodeSnapshot, publish, withdraw
from worker.gpu import GpuBackend
from worker.launcher import signal_group

log = logging.getLogger(__name__)


def snapshot(backend: GpuBackend, node: str, slots: int, job_pgids: dict[int, int]) -> NodeSnapshot:
    """Read the GPUs; memory of processes outside vramq's job groups counts as foreign.

    Foreign memory is the GPU's used memory less what vramq's jobs hold, so memory the driver cannot
    attribute to a visible pid (other containers) is foreign too: admission errs on the safe side.
    """
    processes: dict[int, list[GpuProcessInfo]] = {}
    for process in backend.processes():
        try:
            job_id = job_pgids.get(os.getpgid(process.pid))
        except ProcessLookupError:
            continue
        processes.setdefault(process.gpu_index, []).append(
            GpuProcessInfo(
                pid=process.pid, used_mb=process.used_mb, job_id=job_id, user=_owner(process.pid), util=process.util
            )
        )
    gpus = []
    for gpu in backend.gpus():
        on_gpu = processes.get(gpu.index, [])
        vramq_mb = sum(p.used_mb for p in on_gpu if p.job_id is not None)
        gpus.append(
            GpuSnapshot(
                index=gpu.index,
                uuid=gpu.uuid,
                name=gpu.name,
                total_mb=gpu.total_mb,
                used_mb=gpu.used_mb,
                free_mb=gpu.free_mb,
                foreign_mb=max(0, gpu.used_mb - vramq_mb),
                processes=on_gpu,
            )
        )
    return NodeSnapshot(node=node, time=time.time(), slots=slots, simulated=backend.simulated, gpus=gpus)


class NodeAgent:
    def __init__(self, settings: Settings, backend: GpuBackend, redis: Redis) -> None:
        self.settings = settings
        self.backend = backend
        self.redis = redis
        self.stop = threading.Event()
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * settings.slots
        self._suspects: set[int] = set()

    def job_groups(self) -> dict[int, tuple[int, int]]:
        """pgid -> (job id, attempt) of the job process groups the workers registered on this node."""
        raw = self.redis.hgetall(NODE_PGIDS_KEY.format(node=self.settings.node))
        groups = {}
        for pgid, value in raw.items():  # type: ignore[union-attr]
            job_id, _, attempt = (value.decode() if isinstance(value, bytes) else value).partition(":")
            groups[int(pgid)] = (int(job_id), int(attempt or 0))
        return groups

    def job_pgids(self) -> dict[int, int]:
        return {pgid: job_id for pgid, (job_id, _) in self.job_groups().items()}

    def reap_orphans(self) -> list[int]:
        """Kill job process groups whose supervisor died (its heartbeat expired): otherwise they would hold
        GPU memory after the scheduler released their reservation as lost."""
        reaped = []
        for pgid, (job_id, attempt) in self.job_groups().items():
            if self.redis.exists(RUN_HEARTBEAT_KEY.format(job_id=job_id, attempt=attempt)):
                continue
            if pgid in self._suspects:
                log.warning("job %s attempt %s: its worker died; killing process group %s", job_id, attempt, pgid)
                signal_group(pgid, signal.SIGKILL)
                self.redis.hdel(NODE_PGIDS_KEY.format(node=self.settings.node), str(pgid))
                reaped.append(pgid)
                self._suspects.discard(pgid)
            else:
                self._suspects.add(pgid)  # registered a moment before its first heartbeat, perhaps
        return reaped

    def publish_once(self) -> NodeSnapshot:
        snap = snapshot(self.backend, self.settings.node, self.settings.slots, self.job_pgids())
        publish(self.redis, snap)
        return snap

    def _ensure_workers(self) -> None:
        for slot, process in enumerate(self.workers):
            if process is None or process.poll() is not None:
                if process is not None:
                    log.warning("worker slot %d exited with %s; restarting it", slot, process.returncode)
                self.workers[slot] = subprocess.Popen(
                    [sys.executable, "-m", "worker.rq_worker", self.settings.node, str(slot)],
                    preexec_fn=ending_with_me(),  # the agent is single-threaded
                )

    def run(self) -> None:
        log.info(
            "node %s: %d GPU(s), %d slot(s)",
            self.settings.node,
            len(self.backend.gpus()),
            self.settings.slots,
        )
        try:
            while not self.stop.is_set():
                self._ensure_workers()
                try:
                    self.publish_once()
                    self.reap_orphans()
                except Exception:  # a Redis blip must not take the node down
                    log.exception("could not publish the GPU snapshot")
                self.stop.wait(SNAPSHOT_INTERVAL_S)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop the workers and their supervisors (RQ's second SIGTERM is a cold shutdown that kills the
        work horse), then end the jobs' process groups: the scheduler finds those jobs lost and retries
        them as their max_retries allow."""
        withdraw(self.redis, self.settings.node)
        live = [p for p in self.workers if p is not None and p.poll() is None]
        for _ in range(2):
            for process in live:
                process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
        for pgid in self.job_pgids():
            signal_group(pgid, signal.SIGKILL)
        self.redis.delete(NODE_PGIDS_KEY.format(node=self.settings.node))
        deadline = time.monotonic() + self.settings.cancel_grace_s  # one grace for all, not one each
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _owner(pid: int) -> str | None:
    try:
        return str(psutil.Process(pid).username())
    except (psutil.Error, KeyError):
        return None
