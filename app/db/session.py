"""Engines and sessions; nothing is connected at import time."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.models import User

# pg_advisory_xact_lock key serialising reservation writes (invariant 1); any constant works.
_LEDGER_LOCK_KEY = 0x7652414D
# First half of the two-key advisory locks that serialise writes to one model's versions and aliases.
_MODEL_LOCK_SPACE = 0x4D4F44
# Execution option of the engine behind read-only sessions: on SQLite they BEGIN DEFERRED and never wait.
_READ_ONLY = "vramq_read_only"
# One lock per SQLite engine: the threads of one process queue for the write lock here and are woken the
# moment it frees, instead of polling in SQLite's busy handler (which sleeps 1, 2, 5 ... 100 ms).
_sqlite_writers: WeakKeyDictionary[Engine, threading.RLock] = WeakKeyDictionary()


def make_engine(settings: Settings) -> Engine:
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _configure_sqlite(engine)
        _sqlite_writers[engine] = threading.RLock()
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _configure_sqlite(engine: Engine) -> None:
    """WAL so readers never block the writer; every transaction BEGIN IMMEDIATE so that a
    read-then-write transaction waits for the write lock (busy_timeout) instead of failing."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions on `engine`; `read_only` ones must not write (on SQLite they hold no lock, so a write
    would fail with 'database is locked' instead of waiting its turn)."""
    return sessionmaker(engine.execution_options(**{_READ_ONLY: True}) if read_only else engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error; on SQLite, writers of this
    process take their turn on a lock first."""
    writers = _sqlite_writers.get(factory.kw["bind"])
    with writers or nullcontext(), factory() as session, session.begin():
        yield session


def lock_ledger(session: Session) -> None:
    """Serialise reservation writers until the transaction ends (SQLite's BEGIN IMMEDIATE already does)."""
    if _postgresql(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LEDGER_LOCK_KEY})


def lock_model_names(session: Session, names: list[str]) -> None:
    """Serialise writes to these models' versions and aliases until the transaction ends, so two attempts
    that end at once each get their own next version (SQLite's BEGIN IMMEDIATE already does). Sorted:
    transactions that lock several names take them in one order and cannot deadlock."""
    if _postgresql(session):
        for name in sorted(set(names)):
            session.execute(
                text("SELECT pg_advisory_xact_lock(:space, hashtext(:name))"),
                {"space": _MODEL_LOCK_SPACE, "name": name},
            )


def lock_users(session: Session, user_ids: list[int]) -> None:
    """Serialise submitters for these users until the transaction ends, so each counts the others' queued
    jobs against the quota (SQLite's BEGIN IMMEDIATE already does). In id order: no deadlock."""
    if _postgresql(session):
        session.execute(select(User.id).where(User.id.in_(user_ids)).order_by(User.id).with_for_update())


def _postgresql(session: Session) -> bool:
    """SQLite needs none of these locks: every writer takes the database's write lock at BEGIN IMMEDIATE."""
    return session.get_bind().dialect.name == "postgresql"
