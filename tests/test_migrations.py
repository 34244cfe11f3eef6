"""Alembic creates exactly the schema of the models, on SQLite and PostgreSQL, and can go back."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.config import Settings
from app.db.migrate import downgrade, upgrade
from app.db.models import Base
from app.db.session import make_engine


def test_migrations_match_the_models(settings: Settings) -> None:
    engine = make_engine(settings)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()

    assert diff == []


def test_downgrade_removes_everything_and_upgrade_restores_it(settings: Settings) -> None:
    downgrade(settings, "base")
    engine = make_engine(settings)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(settings)
    assert {"users", "jobs", "runs", "metrics", "model_versions"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_sqlite_runs_in_wal_mode(settings: Settings) -> None:
    if not settings.sqlalchemy_url.startswith("sqlite"):
        return
    engine = make_engine(settings)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()
