"""Users and their bearer tokens (only a token's sha256 is stored)."""

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import User
from app.errors import Unauthorized, UserExists


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session: Session, name: str, *, admin: bool = False) -> tuple[User, str]:
    """Create a user; returns it with its token, which is shown this once and never stored."""
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise UserExists(f"user {name!r} already exists")
    token = secrets.token_urlsafe(32)
    user = User(name=name, admin=admin, token_hash=hash_token(token))
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:
        raise UserExists(f"user {name!r} already exists") from exc
    return user, token


def authenticate(session: Session, token: str | None) -> User:
    user = session.scalar(select(User).where(User.token_hash == hash_token(token))) if token else None
    if user is None:
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
    return user
