"""The FastAPI application; engine and Redis client are created when the app starts, not on import."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis import Redis

from app.api import errors
from app.api.routes import health, jobs, models, resources
from app.config import Settings
from app.db.session import make_engine, make_sessionmaker


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        app.state.settings = settings
        app.state.sessions = make_sessionmaker(engine)
        app.state.redis = Redis.from_url(settings.redis_url)
        yield
        app.state.redis.close()
        engine.dispose()

    app = FastAPI(title="vramq", version="1", lifespan=lifespan)
    errors.install(app)
    app.include_router(health.router)
    for module in (jobs, resources, models):
        app.include_router(module.router, prefix="/api/v1")
    return app


def app_from_env() -> FastAPI:
    """For uvicorn's worker processes, which each build the app from the environment."""
    return create_app(Settings())
