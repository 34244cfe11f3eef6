"""Right-sizing requests from history, and growing a request after an out-of-memory failure."""

import functools
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, func, select
from sqlalchemy.orm import Session

from app.db.models import Job, Run
from app.db.session import lock_ledger
from app.enums import JobStatus

# A right-sized request is the 95th percentile of past peaks plus this much headroom: allocator
# fragmentation and data-dependent batches vary run to run by a few hundred MB.
HEADROOM_MB = 256
HEADROOM_FRACTION = 0.10
# Only recent successful runs say what the script needs now.
HISTORY_RUNS = 50
# A request this many times its history is wasteful enough to warn about.
WASTE_FACTOR = 2
# An attempt that ran out of memory inside its cap retries with this much more.
OOM_GROWTH = 1.5


def script_path(command: Sequence[str], workdir: str | None, base_dir: Path) -> Path | None:
    """The Python script a command runs, if it names one that exists here."""
    script = next((arg for arg in command[1:] if arg.endswith(".py")), None)
    if script is None:
        return None
    for folder in (Path(workdir) if workdir else None, base_dir):
        candidate = Path(script) if Path(script).is_absolute() else (folder / script if folder else None)
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def fingerprint(user: str, command: Sequence[str], workdir: str | None, base_dir: Path) -> str:
    """Jobs with the same user, command and script content share a history."""
    script = script_path(command, workdir, base_dir)
    script_hash = hashlib.sha256(script.read_bytes()).hexdigest() if script else None
    return hashlib.sha256(json.dumps([user, list(command), script_hash]).encode()).hexdigest()


@functools.cache
def _history_query(columns: tuple[str, ...], succeeded_only: bool) -> Select[Any]:
    """Built once per kind: the fingerprints and the limit are bound at execution."""
    values = [getattr(Run, column) for column in columns]
    conditions: list[ColumnElement[bool]] = [Run.fingerprint.in_(bindparam("fingerprints", expanding=True))]
    conditions += [value.is_not(None) for value in values]
    if succeeded_only:
        conditions.append(Run.outcome == JobStatus.SUCCEEDED)
    ranked = (
        select(
            Run.fingerprint,
            *values,
            func.row_number().over(partition_by=Run.fingerprint, order_by=Run.id.desc()).label("rank"),
        )
        .where(*conditions)
        .subquery()
    )
    return (
        select(ranked.c.fingerprint, *(ranked.c[column] for column in columns))
        .where(ranked.c.rank <= bindparam("limit"))
        .order_by(ranked.c.rank)
    )


def recent_runs(
    session: Session,
    column: str | tuple[str, ...],
    fingerprints: Sequence[str],
    *,
    succeeded_only: bool = False,
    limit: int = HISTORY_RUNS,
) -> dict[str, list[Any]]:
    """The values of a run column (not null) in each fingerprint's newest `limit` runs, newest first (a
    tuple per run for a tuple of columns): one query over the runs index, whatever the number of queued
    jobs with that fingerprint."""
    if not fingerprints:
        return {}
    columns = (column,) if isinstance(column, str) else column
    found: dict[str, list[Any]] = {}
    query = _history_query(columns, succeeded_only)
    for fingerprint, *values in session.execute(query, {"fingerprints": list(fingerprints), "limit": limit}):
        found.setdefault(fingerprint, []).append(values[0] if isinstance(column, str) else tuple(values))
    return found


def past_peaks(session: Session, fingerprints: Sequence[str]) -> dict[str, list[int]]:
    """Peak VRAM of the recent successful runs of each fingerprint."""
    return recent_runs(session, "peak_vram_mb", fingerprints, succeeded_only=True)


def suggest(peaks: Sequence[int]) -> int | None:
    """p95 of the peaks (nearest rank) plus headroom; None without history."""
    if not peaks:
        return None
    ordered = sorted(peaks)
    p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]
    return p95 + max(HEADROOM_MB, math.ceil(p95 * HEADROOM_FRACTION))


def grown_request(vram_mb: int, largest_mb: int | None) -> int:
    """The request of the attempt after an OOM: x1.5, rounded up, capped at the largest GPU."""
    grown = math.ceil(vram_mb * OOM_GROWTH)
    return max(vram_mb, min(grown, largest_mb)) if largest_mb else grown


def grow_alike(session: Session, job: Job, vram_mb: int) -> list[int]:
    """After `job` ran out of memory inside its request, the queued jobs of its fingerprint (same user, command
    and script, as many GPUs) that ask for as much or less would too: they ask for `vram_mb`, its next request,
    instead of each failing in turn (a sweep submitted with too small a request). Each says so in its
    warnings (shown with the job and at the top of its log). Their ids.

    Under the ledger lock (a queued job's request is what the scheduler reserves when it dispatches it), taken
    here: call it before writing any job row in the transaction, as the scheduler locks the ledger before its
    rows."""
    if job.fingerprint is None:
        return []
    lock_ledger(session)
    alike = session.scalars(
        select(Job)
        .where(
            Job.fingerprint == job.fingerprint,
            Job.status == JobStatus.QUEUED,
            Job.id != job.id,
            Job.gpus == job.gpus,
            Job.vram_mb <= job.vram_mb,
        )
        .order_by(Job.id)
        .with_for_update(of=Job)
    ).all()
    for queued in alike:
        why = f"asks for {vram_mb} MB, not {queued.vram_mb}: job {job.id} with the same command ran out of memory"
        queued.warnings = [*queued.warnings, f"{why} inside {job.vram_mb} MB"]
        queued.vram_mb = vram_mb
    session.flush()
    return [queued.id for queued in alike]


def per_gpu_room(sizes_mb: Sequence[int], gpus: int) -> int | None:
    """The most that each of `gpus` GPUs of one node can hold (its `gpus`-th largest); None if it has fewer."""
    return sorted(sizes_mb, reverse=True)[gpus - 1] if len(sizes_mb) >= gpus else None
