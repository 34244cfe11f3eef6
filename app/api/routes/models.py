from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from app.api.deps import CurrentUser, RedisDep, RowId, SessionDep, SettingsDep, WritesDep
from app.db.session import transaction
from app.schemas import AliasOut, AliasSet, JobOut, JobSubmit, ModelOut, ModelVersionOut
from app.services import jobs, models
from app.services.waiting import wake_scheduler

router = APIRouter(prefix="/models", tags=["models"])
AliasName = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


@router.get("")
def list_models(_: CurrentUser, session: SessionDep) -> list[ModelOut]:
    return models.list_models(session)


@router.get("/{name}/versions")
def versions(name: str, _: CurrentUser, session: SessionDep) -> list[ModelVersionOut]:
    return models.versions(session, name)


@router.get("/{name}/versions/{version}/artifact")
def artifact(name: str, version: RowId, _: CurrentUser, session: SessionDep) -> FileResponse:
    """The model file, streamed, with its sha256 in X-Vramq-Sha256 (and as the ETag)."""
    found = models.artifact(session, name, version)
    path = Path(found.path)
    return FileResponse(
        path,
        filename=path.name,
        media_type="application/octet-stream",
        headers={"X-Vramq-Sha256": found.sha256, "ETag": f'"{found.sha256}"'},
    )


@router.put("/{name}/aliases/{alias}")
def set_alias(name: str, alias: AliasName, body: AliasSet, _: CurrentUser, writes: WritesDep) -> AliasOut:
    with transaction(writes) as session:
        found = models.set_alias(session, name, alias, body.version)
    return AliasOut(name=found.name, alias=found.alias, version=found.version)


@router.delete("/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
def delete_alias(name: str, alias: str, _: CurrentUser, writes: WritesDep) -> Response:
    with transaction(writes) as session:
        models.delete_alias(session, name, alias)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/versions/{version}/retrain", status_code=status.HTTP_201_CREATED)
def retrain(
    name: str, version: RowId, user: CurrentUser, writes: WritesDep, redis: RedisDep, settings: SettingsDep
) -> JobOut:
    """Submit again the spec that produced this version, sized from its history when there is one."""
    with transaction(writes) as session:
        spec = JobSubmit.model_validate(models.get_version(session, name, version).spec)
        job, suggested = jobs.submit(session, redis, jobs.Submission(user, spec, right_size=True), settings)
    wake_scheduler(redis)
    return jobs.to_out(job, suggested)
