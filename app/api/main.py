"""The FastAPI application; engine and Redis client are created when the app starts, not on import."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from redis import Redis
from sqlalchemy.exc import OperationalError
from starlette.datastructures import State

from app.api import errors
from app.api.intake import GroupCommit
from app.api.routes import health, jobs, models, resources
from app.config import Settings
from app.db.session import make_engine, make_sessionmaker, transaction
from app.errors import VramqError
from app.services import jobs as jobs_service
from app.services.waiting import wake_scheduler


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        app.state.settings = settings
        app.state.sessions = make_sessionmaker(engine)
        app.state.reads = make_sessionmaker(engine, read_only=True)
        app.state.users = {}  # token hash -> (User, expiry), see deps._current_user
        app.state.redis = Redis.from_url(settings.redis_url)
        app.state.submissions = GroupCommit(partial(_write_submissions, app.state))
        yield
        app.state.redis.close()
        engine.dispose()

    app = FastAPI(title="vramq", version="1", lifespan=lifespan)
    errors.install(app)
    app.include_router(health.router)
    for module in (jobs, resources, models):
        app.include_router(module.router, prefix="/api/v1")
    return app


def _write_submissions(state: State, batch: list[jobs_service.Submission]) -> list[jobs_service.Submitted | Exception]:
    """One group commit, then a nudge to the scheduler if it queued anything. A batch the database refuses
    (a value it cannot hold) wrote nothing: it is written again a submission at a time, so that only the bad
    one fails. A database that is down fails them all, each at once."""
    try:
        results: list[jobs_service.Submitted | Exception] = [*_commit(state, batch)]
    except Exception as exc:
        if isinstance(exc, OperationalError) or len(batch) == 1:
            raise
        results = [_alone(state, submission) for submission in batch]
    if any(not isinstance(result, Exception) for result in results):
        wake_scheduler(state.redis)
    return results


def _alone(state: State, submission: jobs_service.Submission) -> jobs_service.Submitted | Exception:
    """One submission in a transaction of its own: its result, or what refused it."""
    try:
        [result] = _commit(state, [submission])
    except OperationalError:
        raise
    except Exception as refused:  # noqa: BLE001 - this submission's own failure, for its caller alone
        return refused
    return result


def _commit(state: State, batch: list[jobs_service.Submission]) -> list[jobs_service.Submitted | VramqError]:
    with transaction(state.sessions) as session:
        return jobs_service.submit_many(session, state.redis, batch, state.settings)


def app_from_env() -> FastAPI:
    """For uvicorn's worker processes, which each build the app from the environment."""
    return create_app(Settings())
