"""The model registry: each file a successful attempt leaves in models/ becomes a version."""

import hashlib
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import ModelAlias, ModelVersion
from app.db.session import lock_model_names
from app.errors import AliasNotFound, ModelNotFound
from app.schemas import ModelOut, ModelVersionOut

MODEL_SUFFIXES = (".keras", ".h5")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_artifacts(models_dir: Path) -> list[tuple[str, Path]]:
    """(name, file) for each model an attempt saved, by name (the order `register` locks them in); a
    SavedModel directory is zipped into one file."""
    found: list[tuple[str, Path]] = []
    if not models_dir.is_dir():
        return found
    for entry in sorted(models_dir.iterdir()):
        if entry.name.startswith("."):
            continue  # half-written files
        if entry.is_file() and entry.suffix in MODEL_SUFFIXES:
            found.append((entry.stem, entry))
        elif entry.is_dir() and (entry / "saved_model.pb").exists():
            archive = shutil.make_archive(str(entry), "zip", root_dir=entry)
            found.append((entry.name, Path(archive)))
    return sorted(found)


def register(
    session: Session,
    *,
    name: str,
    path: Path,
    job_id: int,
    attempt: int,
    metrics: dict[str, Any],
    spec: dict[str, Any] | None = None,
    peak_vram_mb: int | None = None,
    gpu_seconds: float | None = None,
    seed: int | None = None,
) -> ModelVersion:
    """The model's next version; other transactions registering the same name wait until this one ends."""
    lock_model_names(session, [name])
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
        spec=spec or {},
        peak_vram_mb=peak_vram_mb,
        gpu_seconds=gpu_seconds,
        seed=seed,
    )
    session.add(version)
    session.flush()
    return version


def _aliases(session: Session, name: str) -> dict[int, list[str]]:
    """version -> the aliases that point at it."""
    found: dict[int, list[str]] = {}
    for alias in session.scalars(select(ModelAlias).where(ModelAlias.name == name).order_by(ModelAlias.alias)):
        found.setdefault(alias.version, []).append(alias.alias)
    return found


def list_models(session: Session) -> list[ModelOut]:
    rows = session.execute(
        select(ModelVersion.name, func.max(ModelVersion.version))
        .group_by(ModelVersion.name)
        .order_by(ModelVersion.name)
    )
    return [ModelOut(name=name, latest_version=latest) for name, latest in rows]


def versions(session: Session, name: str) -> list[ModelVersionOut]:
    found = session.scalars(select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.version)).all()
    if not found:
        raise ModelNotFound(f"no model named {name!r}")
    by_version = _aliases(session, name)
    return [
        ModelVersionOut.model_validate(v).model_copy(update={"aliases": by_version.get(v.version, [])}) for v in found
    ]


def get_version(session: Session, name: str, version: int) -> ModelVersion:
    found = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
    if found is None:
        raise ModelNotFound(f"model {name!r} has no version {version}")
    return found


def set_alias(session: Session, name: str, alias: str, version: int) -> ModelAlias:
    """Point `alias` at a version of the model, creating or moving it (one writer of the model at a time:
    two admins creating the same alias at once both succeed, the later one wins)."""
    lock_model_names(session, [name])
    get_version(session, name, version)
    existing = session.scalar(select(ModelAlias).where(ModelAlias.name == name, ModelAlias.alias == alias))
    if existing is None:
        existing = ModelAlias(name=name, alias=alias, version=version)
        session.add(existing)
    else:
        existing.version = version
    session.flush()
    return existing


def delete_alias(session: Session, name: str, alias: str) -> None:
    existing = session.scalar(select(ModelAlias).where(ModelAlias.name == name, ModelAlias.alias == alias))
    if existing is None:
        raise AliasNotFound(f"model {name!r} has no alias {alias!r}")
    session.delete(existing)


def artifact(session: Session, name: str, version: int) -> ModelVersion:
    found = get_version(session, name, version)
    if not Path(found.path).is_file():
        raise ModelNotFound(f"the file of {name!r} version {version} is gone from {found.path}")
    return found
