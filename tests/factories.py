"""Test data."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Job, User
from app.db.session import transaction
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
