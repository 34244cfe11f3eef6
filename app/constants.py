"""Redis key names and timings shared by the API, the scheduler and the nodes, each with its reason."""

PREFIX = "vramq"

# Set of node names that ever published; each node's snapshot lives under NODE_KEY and expires.
NODES_KEY = f"{PREFIX}:nodes"
NODE_KEY = PREFIX + ":node:{node}"
# A node publishes every second; three missed snapshots and it is considered dead.
SNAPSHOT_INTERVAL_S = 1.0
SNAPSHOT_TTL_S = 3.0

# pgid -> job id of the job process groups running on a node: NVML pids in these groups are vramq's.
NODE_PGIDS_KEY = PREFIX + ":node:{node}:pgids"

# A running attempt refreshes its heartbeat every sample; a worker dead this long makes the job lost.
RUN_HEARTBEAT_KEY = PREFIX + ":run:{job_id}:{attempt}"
RUN_HEARTBEAT_TTL_S = 10.0

# A copy of each attempt's log, appended by its worker as the file grows, so that the API serves logs of
# jobs that ran on another machine. Past RUN_LOG_MAX_BYTES the copy keeps the newest half (the end of a log
# says why a job failed); RUN_LOG_FROM_KEY holds the file offset the copy starts at. Once the attempt has
# ended only its last RUN_LOG_KEEP_BYTES stay (the whole log is on its node). Kept a week.
RUN_LOG_KEY = PREFIX + ":log:{job_id}:{attempt}"
RUN_LOG_FROM_KEY = RUN_LOG_KEY + ":from"
RUN_LOG_MAX_BYTES = 16 * 1024 * 1024
RUN_LOG_KEEP_BYTES = 1024 * 1024
RUN_LOG_TTL_S = 7 * 24 * 3600

# A running attempt's training progress (progress.json of its Keras autolog), refreshed with its heartbeat.
RUN_PROGRESS_KEY = PREFIX + ":progress:{job_id}:{attempt}"
# A running attempt's measured compute load: the mean of its last RUN_LOAD_SAMPLES utilisation samples,
# refreshed with its heartbeat once it has that many. 60 samples are 30 s at the default sampling: long
# enough to smooth NVML's momentary readings and to be past most of the start-up (imports, data loading),
# short enough to follow a job whose load changes.
RUN_LOAD_KEY = PREFIX + ":load:{job_id}:{attempt}"
RUN_LOAD_SAMPLES = 60
# Set by the scheduler to preempt a running attempt (policy.preemptions): its worker stops it, and the job
# is queued again to resume from its last epoch checkpoint. Expires in case the attempt ended meanwhile.
RUN_PREEMPT_KEY = PREFIX + ":preempt:{job_id}:{attempt}"
RUN_PREEMPT_TTL_S = 3600
# A preempted job's run time left when it resumes (its epochs left at its pace), for the scheduler to plan
# its next attempt by; read while it is queued again after the preemption.
RESUME_LEFT_KEY = PREFIX + ":resume-left:{job_id}"
RESUME_LEFT_TTL_S = 7 * 24 * 3600

# One scheduler dispatches at a time; a leader that stops renewing loses the lock after this long.
LEADER_KEY = f"{PREFIX}:scheduler:leader"
LEADER_TTL_S = 5.0

# The API pushes here after a submission commits: the leader wakes at once instead of at its next tick.
SCHEDULER_WAKE_KEY = f"{PREFIX}:scheduler:wake"

# job id -> why it waits and when it may start, rewritten by the leader every tick.
PENDING_KEY = f"{PREFIX}:pending"

# Ids of the queued jobs that preempted others or were moved, not placed since (policy.schedule's making_room):
# kept here, not in the leader's memory, so that a new leader places them first too.
MAKING_ROOM_KEY = f"{PREFIX}:scheduler:making-room"
# Of those, each moved job -> the [node, GPU] it was moved to (policy.schedule's moving_to).
MOVING_TO_KEY = f"{PREFIX}:scheduler:moving-to"

# A dispatched job whose RQ message is missing this long after dispatch is enqueued again (Redis lost it).
REENQUEUE_AFTER_S = 10.0


def run_log_keys(job_id: int, attempt: int) -> tuple[str, str]:
    """The Redis keys of an attempt's log copy and of the file offset the copy starts at."""
    return RUN_LOG_KEY.format(job_id=job_id, attempt=attempt), RUN_LOG_FROM_KEY.format(job_id=job_id, attempt=attempt)


def node_queue(node: str) -> str:
    """The RQ queue a node's workers listen on."""
    return f"{PREFIX}.node.{node}"


def rq_job_id(job_id: int, attempt: int) -> str:
    return f"{PREFIX}-{job_id}-{attempt}"
