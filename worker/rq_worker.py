"""One RQ worker slot of a node: `python -m worker.rq_worker NODE SLOT`, started by the node agent."""

import os
import sys

from redis import Redis
from rq import Worker
from rq.serializers import JSONSerializer

from app.config import Settings
from app.constants import node_queue
from worker import task  # imported once here, every forked work horse starts with it (~0.7 s a job)


def main(node: str, slot: int) -> None:
    settings = Settings()
    task.prepare(settings)  # the database driver (~0.15 s a job for psycopg), mappers, dialect
    redis = Redis.from_url(settings.redis_url)
    rq_worker = Worker(
        [node_queue(node)],
        connection=redis,
        serializer=JSONSerializer,
        name=f"{node}.{slot}.{os.getpid()}",
    )
    rq_worker.work(logging_level="WARNING")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
