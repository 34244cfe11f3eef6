"""Alembic environment: the URL comes from vramq's one Settings object."""

from alembic import context
from sqlalchemy import Connection

from app.config import Settings
from app.db.models import Base
from app.db.session import make_engine


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    settings = context.config.attributes.get("settings") or Settings()
    engine = make_engine(settings)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
