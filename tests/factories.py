"""Test data."""

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Job, Run, User, utcnow
from app.db.session import transaction
from app.enums import JobStatus
from app.services.users import create_user


def make_job(sessions: sessionmaker[Session], user: str = "alice", **fields: Any) -> Job:
    values: dict[str, Any] = {"command": ["true"], "vram_mb": 1000, "env": {}, **fields}
    with transaction(sessions) as session:
        owner = session.scalar(select(User).where(User.name == user)) or create_user(session, user)[0]
        job = Job(user_id=owner.id, **values)
        session.add(job)
        session.flush()
        session.refresh(job)
        return job


def past_runs(
    sessions: sessionmaker[Session], fingerprint: str, *seconds: float, outcome: JobStatus, util: float | None = None
) -> None:
    """Finished runs of a fingerprint that took these many seconds (at this measured utilisation)."""
    job = make_job(sessions, fingerprint=fingerprint, status=outcome)
    end = utcnow() - timedelta(hours=1)
    with transaction(sessions) as session:
        for attempt, length in enumerate(seconds, 1):
            run = Run(job_id=job.id, attempt=attempt, node="node-a", gpu_indices=[0], vram_mb=1000, outcome=outcome)
            run.fingerprint, run.started_at, run.finished_at = fingerprint, end - timedelta(seconds=length), end
            run.util = util
            session.add(run)
