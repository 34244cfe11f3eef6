"""Follows $VRAMQ_OUTPUT_DIR/metrics.jsonl while a job runs and records each epoch's figures in SQL."""

import json
import math
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Metric


class MetricsTail:
    """Reads only the complete lines added since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def read_new(self) -> list[tuple[int, str, float]]:
        """(epoch, name, value) for every numeric figure in the new lines; bad lines are skipped."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        figures = []
        for line in complete.decode(errors="replace").splitlines():
            self.lines += 1
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            epoch = record.pop("epoch", self.lines - 1)
            if not isinstance(epoch, int):
                continue
            for name, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    figures.append((epoch, str(name)[:128], float(value)))
        return figures


def record(session: Session, job_id: int, attempt: int, figures: list[tuple[int, str, float]]) -> None:
    session.add_all(
        Metric(job_id=job_id, attempt=attempt, epoch=epoch, name=name, value=value) for epoch, name, value in figures
    )


MAXIMISED = ("acc", "auc", "precision", "recall", "f1")


def best_epoch(session: Session, job_id: int, attempt: int, monitor: str | None = None) -> dict[str, float]:
    """The figures of the attempt's best epoch by `monitor` (default val_loss, else loss; else the last)."""
    rows = session.execute(
        select(Metric.epoch, Metric.name, Metric.value)
        .where(Metric.job_id == job_id, Metric.attempt == attempt)
        .order_by(Metric.epoch, Metric.id)
    ).all()
    epochs: dict[int, dict[str, float]] = {}
    for epoch, name, value in rows:
        epochs.setdefault(epoch, {})[name] = value
    if not epochs:
        return {}
    names = {name for figures in epochs.values() for name in figures}
    key = next((m for m in (monitor, "val_loss", "loss") if m and m in names), None)
    if key is None:
        chosen = max(epochs)
    else:
        scored = [(figures[key], epoch) for epoch, figures in epochs.items() if key in figures]
        chosen = (max if any(word in key for word in MAXIMISED) else min)(scored)[1]
    return {"epoch": chosen, **epochs[chosen]}
