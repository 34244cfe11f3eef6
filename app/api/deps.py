"""Dependencies of the routes, as Annotated aliases."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import User
from app.errors import Forbidden
from app.services.users import authenticate


# Trivial dependencies are async so FastAPI does not hop to its thread pool for them.
async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _redis(request: Request) -> Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


def _session(request: Request) -> Iterator[Session]:
    """One transaction per request: committed when the route returns (before the response is sent, so a
    client that got 201 can read what it wrote), rolled back on an error."""
    with request.app.state.sessions() as session, session.begin():
        yield session


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[Redis, Depends(_redis)]
SessionDep = Annotated[Session, Depends(_session, scope="function")]
_bearer = HTTPBearer(auto_error=False)


def _current_user(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    return authenticate(session, credentials.credentials if credentials else None)


def _admin(user: Annotated[User, Depends(_current_user)]) -> User:
    if not user.admin:
        raise Forbidden("only an admin may do this")
    return user


CurrentUser = Annotated[User, Depends(_current_user)]
AdminUser = Annotated[User, Depends(_admin)]
