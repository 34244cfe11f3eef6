from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import PlainTextResponse, StreamingResponse

from app.api.deps import CurrentUser, RedisDep, RowId, RowNumber, SessionDep, SubmissionsDep, WritesDep
from app.db.session import transaction
from app.enums import JobStatus
from app.schemas import JobOut, JobSubmit, MetricOut, RunOut
from app.services import jobs

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def submit(spec: JobSubmit, user: CurrentUser, submissions: SubmissionsDep) -> JobOut:
    """Queued in the next group commit (see app/api/intake.py): the job is in SQL when this answers."""
    job, suggested = await submissions(jobs.Submission(user, spec))
    return jobs.to_out(job, suggested)


@router.get("")
def list_jobs(
    response: Response,
    _: CurrentUser,
    session: SessionDep,
    redis: RedisDep,
    status: JobStatus | None = None,
    user: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[RowNumber, Query(description="X-Next-Cursor of the previous page")] = None,
) -> list[JobOut]:
    page = jobs.list_jobs(session, status=status, user=user, limit=limit, before_id=cursor)
    if len(page) == limit:
        response.headers["X-Next-Cursor"] = str(page[-1].id)
    return jobs.to_outs(session, redis, page)


@router.get("/{job_id}")
def get(job_id: RowId, _: CurrentUser, session: SessionDep, redis: RedisDep) -> JobOut:
    [out] = jobs.to_outs(session, redis, [jobs.get(session, job_id)])
    return out


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
def cancel(job_id: RowId, user: CurrentUser, writes: WritesDep) -> JobOut:
    with transaction(writes) as session:
        return jobs.to_out(jobs.cancel(session, job_id, user))


@router.get("/{job_id}/logs", response_class=PlainTextResponse)
def logs(
    request: Request,
    job_id: RowId,
    _: CurrentUser,
    session: SessionDep,
    redis: RedisDep,
    attempt: RowNumber = None,
    follow: bool = False,
) -> Response:
    """stdout and stderr of an attempt; with follow=true, streamed until the attempt (or the job) ends."""
    text = jobs.log_text(session, redis, job_id, attempt)  # also refuses an unknown job or attempt
    if not follow:
        return PlainTextResponse(text)
    return StreamingResponse(
        jobs.follow_log(request.app.state.reads, redis, job_id, attempt), media_type="text/plain; charset=utf-8"
    )


@router.get("/{job_id}/runs")
def runs(job_id: RowId, _: CurrentUser, session: SessionDep) -> list[RunOut]:
    return [RunOut.model_validate(run) for run in jobs.runs(session, job_id)]


@router.get("/{job_id}/metrics")
def metrics(job_id: RowId, _: CurrentUser, session: SessionDep) -> list[MetricOut]:
    return [MetricOut.model_validate(metric) for metric in jobs.metrics(session, job_id)]
