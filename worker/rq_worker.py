"""One RQ worker slot of a node: `python -m worker.rq_worker NODE SLOT AGENT_PID`, started by the node agent."""

import ctypes
import os
import signal
import sys

from redis import Redis
from rq import Worker
from rq.serializers import JSONSerializer

from app.config import Settings
from app.constants import node_queue
from worker import task  # imported once here, every forked work horse starts with it (~0.7 s a job)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with(agent_pid: int) -> None:
    """End this slot when its agent ends, however it ends (SIGKILL included). A slot that outlived its
    agent would go on taking the node's jobs: with nobody publishing the node, beside the slots of a
    restarted agent, or (in tests) with another test's settings. Linux only; elsewhere the agent's own
    shutdown is all there is."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != agent_pid:  # the agent ended before the line above took effect
        os._exit(1)


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
    die_with(int(sys.argv[3]))
    main(sys.argv[1], int(sys.argv[2]))
