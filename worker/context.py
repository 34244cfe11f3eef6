"""What a worker process shares with the jobs it runs: settings, SQL, Redis and the GPU backend."""

from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.session import make_engine, make_sessionmaker
from worker.gpu import GpuBackend, make_backend


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: Redis
    backend: GpuBackend
    base_dir: Path  # where the node was started; relative script paths fall back to it

    @classmethod
    def create(cls, settings: Settings, engine: Engine | None = None) -> "WorkerContext":
        """`engine`: one made before the fork (see worker.task.prepare); disposed with the context all the same."""
        engine = engine or make_engine(settings)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            redis=Redis.from_url(settings.redis_url),
            backend=make_backend(settings),
            base_dir=Path.cwd(),
        )

    def close(self) -> None:
        self.backend.close()
        self.redis.close()
        self.engine.dispose()
