"""The model registry: each file a successful attempt leaves in models/ becomes a version."""

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import ModelVersion
from app.errors import ModelNotFound
from app.schemas import ModelOut

MODEL_SUFFIXES = (".keras", ".h5")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_artifacts(models_dir: Path) -> list[tuple[str, Path]]:
    """(name, file) for each model an attempt saved; a SavedModel directory is zipped into one file."""
    found: list[tuple[str, Path]] = []
    if not models_dir.is_dir():
        return found
    for entry in sorted(models_dir.iterdir()):
        if entry.is_file() and entry.suffix in MODEL_SUFFIXES:
            found.append((entry.stem, entry))
        elif entry.is_dir() and (entry / "saved_model.pb").exists():
            archive = shutil.make_archive(str(entry), "zip", root_dir=entry)
            found.append((entry.name, Path(archive)))
    return found


def register(
    session: Session, *, name: str, path: Path, job_id: int, attempt: int, metrics: dict[str, Any]
) -> ModelVersion:
    latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name))
    version = ModelVersion(
        name=name,
        version=(latest or 0) + 1,
        job_id=job_id,
        attempt=attempt,
        path=str(path),
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
        metrics=metrics,
    )
    session.add(version)
    session.flush()
    return version


def list_models(session: Session) -> list[ModelOut]:
    rows = session.execute(
        select(ModelVersion.name, func.max(ModelVersion.version))
        .group_by(ModelVersion.name)
        .order_by(ModelVersion.name)
    )
    return [ModelOut(name=name, latest_version=latest) for name, latest in rows]


def versions(session: Session, name: str) -> Sequence[ModelVersion]:
    found = session.scalars(select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.version)).all()
    if not found:
        raise ModelNotFound(f"no model named {name!r}")
    return found


def artifact(session: Session, name: str, version: int) -> ModelVersion:
    found = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
    if found is None:
        raise ModelNotFound(f"model {name!r} has no version {version}")
    if not Path(found.path).is_file():
        raise ModelNotFound(f"the file of {name!r} version {version} is gone from {found.path}")
    return found
