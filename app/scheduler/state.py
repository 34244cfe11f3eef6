"""What the scheduling policy reads and returns: plain data, the same for the live scheduler and
the simulator."""

from dataclasses import dataclass, field

DEFAULT_UTIL = 0.5  # Lucid's median solo utilisation (48%), for a job with no history yet


@dataclass(frozen=True)
class GpuState:
    index: int
    available_mb: int  # total - reservations - foreign memory - safety margin
    util: float = 0.0  # expected compute load of the jobs reserved on it (sum of their utilisations)


@dataclass(frozen=True)
class NodeState:
    name: str
    free_slots: int  # workers that can start one more job now
    gpus: tuple[GpuState, ...]


@dataclass(frozen=True)
class PendingJob:
    id: int
    vram_mb: int
    gpus: int = 1
    priority: int = 0
    submitted: float = 0.0
    user: str = ""
    util: float = DEFAULT_UTIL
    duration_s: float | None = None  # expected run time (its time limit, or history); None: unknown
    # True: duration_s is a time limit, an upper bound on the run time rather than an estimate of it
    duration_is_limit: bool = False


@dataclass(frozen=True)
class RunningJob:
    node: str
    gpu_indices: tuple[int, ...]
    vram_mb: int
    util: float = DEFAULT_UTIL
    expected_end: float | None = None  # None: unknown (no time limit, progress or history, or past them)
    job_id: int | None = None
    # Seconds a stop asked now takes: to the end of its epoch under way, where its autolog saves a checkpoint
    # that its next attempt resumes from (nothing is lost). None: no epoch of its own yet (no pace to tell,
    # or it has just resumed): never preempted.
    stop_s: float | None = None
    stopping: bool = False  # preempted already: it stops at the end of its epoch
    resumed: bool = False  # its last attempt was preempted (it resumed from a checkpoint): never stopped again


@dataclass(frozen=True)
class UserState:
    usage: float = 0.0  # reserved VRAM GB-hours, exponentially decayed (fairshare.py)
    running: int = 0
    reserved_mb: int = 0


@dataclass(frozen=True)
class Quotas:
    """Per-user limits on what may run at once (None: unlimited)."""

    running: int | None = None
    reserved_mb: int | None = None


@dataclass(frozen=True)
class PolicyConfig:
    fair_share: bool = True
    backfill: bool = True  # False: strict order, the first job that cannot start blocks the rest
    compute_cap: float | None = 1.7  # expected compute load a GPU may reach (tuned: bench/targets.py --set)
    critical_share: float | None = 0.9  # jobs this long relative to the packed work ahead start first
    # A critical job waiting for memory may preempt checkpointed jobs, and a checkpointed job on the GPU that
    # would end last may be moved to one that drains sooner (policy.moves).
    preempt: bool = True
    quotas: Quotas = Quotas()


@dataclass(frozen=True)
class Placement:
    job_id: int
    node: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class Wait:
    reason: str
    estimated_start: float | None = None
    kind: str = ""  # what it lacks, for tallies: memory, slots, compute, held, critical, quota, order


@dataclass(frozen=True)
class Preemption:
    """Running jobs to stop and queue again, so that `for_job` finds room on `gpu` of `node`. A move: `for_job`
    is the one job stopped, to resume there (policy.moves)."""

    for_job: int
    node: str
    gpu: int
    job_ids: tuple[int, ...]

    @property
    def move(self) -> bool:
        return self.job_ids == (self.for_job,)


@dataclass
class Decision:
    placements: list[Placement] = field(default_factory=list)
    waiting: dict[int, Wait] = field(default_factory=dict)
    preemptions: list[Preemption] = field(default_factory=list)
