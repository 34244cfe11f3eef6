"""Dependencies of the routes, as Annotated aliases.

Reads run in a read-only session that holds no lock; a route that writes opens its own short transaction
(`with transaction(writes) as session:`) inside its one thread-pool call, so the SQLite write lock is
never held while a request waits for the event loop."""

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.api.intake import GroupCommit
from app.config import Settings
from app.db.models import User
from app.errors import Forbidden
from app.schemas import SQL_INT_MAX
from app.services.jobs import Submission, Submitted
from app.services.users import authenticate, hash_token

# How long a token's user is remembered by an API process (users never change once created).
USER_CACHE_S = 60.0


# Trivial dependencies are async so FastAPI does not hop to its thread pool for them.
async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _redis(request: Request) -> Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


async def _writes(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions  # type: ignore[no-any-return]


def _session(request: Request) -> Iterator[Session]:
    """A read-only transaction for the request (a consistent snapshot on both databases)."""
    with request.app.state.reads() as session, session.begin():
        yield session


async def _submissions(request: Request) -> GroupCommit[Submission, Submitted]:
    return request.app.state.submissions  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[Redis, Depends(_redis)]
SessionDep = Annotated[Session, Depends(_session, scope="function")]
WritesDep = Annotated[sessionmaker[Session], Depends(_writes)]
SubmissionsDep = Annotated[GroupCommit[Submission, Submitted], Depends(_submissions)]
_bearer = HTTPBearer(auto_error=False)


async def _current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    """The caller, detached from any session (its columns loaded); known tokens cost no query."""
    token = credentials.credentials if credentials else None
    known: dict[str, tuple[User, float]] = request.app.state.users
    key = hash_token(token) if token else ""
    cached = known.get(key)
    if cached and cached[1] > time.monotonic():
        return cached[0]
    user = await run_in_threadpool(_authenticate, request.app.state.reads, token)
    known[key] = (user, time.monotonic() + USER_CACHE_S)
    return user


def _authenticate(reads: sessionmaker[Session], token: str | None) -> User:
    with reads() as session, session.begin():
        return authenticate(session, token)


async def _admin(user: Annotated[User, Depends(_current_user)]) -> User:
    if not user.admin:
        raise Forbidden("only an admin may do this")
    return user


CurrentUser = Annotated[User, Depends(_current_user)]
# Ids and numbers in a path or query that the database could hold (else a 422, not a 500 from the database).
RowId = Annotated[int, Path(ge=1, le=SQL_INT_MAX)]
RowNumber = Annotated[int | None, Query(ge=1, le=SQL_INT_MAX)]
AdminUser = Annotated[User, Depends(_admin)]
