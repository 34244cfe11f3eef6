"""One RQ worker slot of a node: `python -m worker.rq_worker NODE SLOT`, started by the node agent."""

import os
import sys

from redis import Redis
from rq import Worker
from rq.serializers import JSONSerializer

import worker.task  # noqa: F401 - imported once here, every forked work horse starts with it (~0.7 s a job)
from app.config import Settings
from app.constants import node_queue
from app.db.session import make_engine


def main(node: str, slot: int) -> None:
    settings = Settings()
    make_engine(settings).dispose()  # loads the database driver here, once (~0.15 s a job for psycopg)
    redis = Redis.from_url(settings.redis_url)
    worker = Worker(
        [node_queue(node)],
        connection=redis,
        serializer=JSONSerializer,
        name=f"{node}.{slot}.{os.getpid()}",
    )
    worker.work(logging_level="WARNING")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
