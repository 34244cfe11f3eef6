"""Alembic creates exactly the schema of the models, on SQLite and PostgreSQL, and can go back."""

import json

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from app.config import Settings
from app.db.migrate import downgrade, upgrade
from app.db.models import Base
from app.db.session import make_engine, make_sessionmaker
from app.services.sizing import past_peaks


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


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_runs_in_wal_mode(settings: Settings) -> None:
    engine = make_engine(settings)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()


def _insert_old_user(conn: Connection) -> None:
    """User 1, as any schema version has stored it, for the rows written before an upgrade."""
    conn.execute(
        text(
            "INSERT INTO users (id, name, admin, token_hash, created_at) "
            "VALUES (1, 'old', false, 'h', CURRENT_TIMESTAMP)"
        )
    )


def test_upgrading_keeps_existing_jobs_with_sane_defaults(settings: Settings) -> None:
    downgrade(settings, "0001")
    engine = make_engine(settings)
    with engine.begin() as conn:
        _insert_old_user(conn)
        conn.execute(
            text(
                "INSERT INTO jobs (id, user_id, status, command, env, vram_mb, gpus, priority, max_retries, attempt, "
                "cancel_requested, created_at) VALUES (1, 1, 'succeeded', '[\"true\"]', '{}', 100, 1, 0, 0, 1, false, "
                "CURRENT_TIMESTAMP)"
            )
        )
    upgrade(settings)
    with engine.connect() as conn:
        retry_on, warnings = conn.execute(text("SELECT retry_on, warnings FROM jobs WHERE id = 1")).one()
    engine.dispose()

    def decoded(value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    assert decoded(retry_on) == ["oom", "lost"]
    assert decoded(warnings) == []


def test_upgrading_gives_existing_runs_their_jobs_fingerprint(settings: Settings) -> None:
    """0004 copies each job's fingerprint onto its runs: the history of runs recorded before it still
    right-sizes later submissions."""
    downgrade(settings, "0003")
    engine = make_engine(settings)
    with engine.begin() as conn:
        _insert_old_user(conn)
        conn.execute(
            text(
                "INSERT INTO jobs (id, user_id, status, command, env, vram_mb, gpus, priority, max_retries, attempt, "
                "cancel_requested, created_at, retry_on, warnings, fingerprint) VALUES (1, 1, 'succeeded', "
                "'[\"true\"]', '{}', 100, 1, 0, 0, 1, false, CURRENT_TIMESTAMP, '[]', '[]', 'fp-old')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO runs (id, job_id, attempt, node, gpu_indices, vram_mb, outcome, peak_vram_mb, "
                "reserved_at) VALUES (1, 1, 1, 'n', '[0]', 100, 'succeeded', 700, CURRENT_TIMESTAMP)"
            )
        )
    upgrade(settings)
    with make_sessionmaker(engine)() as session:
        assert past_peaks(session, ["fp-old"]) == {"fp-old": [700]}
    engine.dispose()
