from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.deps import CurrentUser, SessionDep
from app.schemas import ModelOut, ModelVersionOut
from app.services import models

router = APIRouter(prefix="/models", tags=["models"])


@router.get("")
def list_models(_: CurrentUser, session: SessionDep) -> list[ModelOut]:
    return models.list_models(session)


@router.get("/{name}/versions")
def versions(name: str, _: CurrentUser, session: SessionDep) -> list[ModelVersionOut]:
    return [ModelVersionOut.model_validate(v) for v in models.versions(session, name)]


@router.get("/{name}/versions/{version}/artifact")
def artifact(name: str, version: int, _: CurrentUser, session: SessionDep) -> FileResponse:
    found = models.artifact(session, name, version)
    path = Path(found.path)
    return FileResponse(
        path,
        filename=path.name,
        media_type="application/octet-stream",
        headers={"X-Vramq-Sha256": found.sha256},
    )
