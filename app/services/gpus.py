"""The cluster's GPUs as researchers see them: NVML readings beside vramq's reservations."""

from redis import Redis
from sqlalchemy.orm import Session

from app.db.models import utcnow
from app.scheduler import inputs
from app.scheduler.ledger import active_jobs, available_mb, gpu_loads, reservations_of, running_attempts
from app.schemas import ForeignProcess, GpuOut
from app.services import progress
from app.services.nodes import live_nodes


def gpu_view(session: Session, redis: Redis, margin_mb: int) -> list[GpuOut]:
    active = active_jobs(session)
    reservations = reservations_of(active)
    # The compute load the scheduler packs by: each job's measured load while it runs, else its history's
    # (its fingerprint's finished runs, else its running ones).
    measured = progress.read_loads(redis, running_attempts(active))
    history = inputs.History.of(session, active, measured)
    loads = gpu_loads(inputs.running_jobs(active, history, utcnow(), loads=measured))
    return [
        GpuOut(
            node=snap.node,
            index=gpu.index,
            uuid=gpu.uuid,
            name=gpu.name,
            total_mb=gpu.total_mb,
            used_mb=gpu.used_mb,
            free_mb=gpu.free_mb,
            reserved_mb=reservations.mb[snap.node, gpu.index],
            foreign_mb=gpu.foreign_mb,
            available_mb=available_mb(gpu.total_mb, reservations.mb[snap.node, gpu.index], gpu.foreign_mb, margin_mb),
            simulated=snap.simulated,
            jobs=sorted(reservations.jobs[snap.node, gpu.index]),
            load=round(loads[snap.node, gpu.index], 2),
            processes=[
                ForeignProcess(pid=p.pid, user=p.user, used_mb=p.used_mb) for p in gpu.processes if p.job_id is None
            ],
        )
        for snap in live_nodes(redis)
        for gpu in snap.gpus
    ]
