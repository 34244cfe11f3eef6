"""GPUs and users."""

from fastapi import APIRouter, status

from app.api.deps import AdminUser, CurrentUser, RedisDep, SessionDep, SettingsDep, WritesDep
from app.db.session import transaction
from app.schemas import GpuOut, UserCreate, UserCreated
from app.services.gpus import gpu_view
from app.services.users import create_user

router = APIRouter(tags=["resources"])


@router.get("/gpus")
def gpus(_: CurrentUser, session: SessionDep, redis: RedisDep, settings: SettingsDep) -> list[GpuOut]:
    return gpu_view(session, redis, settings.safety_margin_mb)


@router.post("/users", status_code=status.HTTP_201_CREATED)
def add_user(body: UserCreate, _: AdminUser, writes: WritesDep) -> UserCreated:
    with transaction(writes) as session:
        user, token = create_user(session, body.name, admin=body.admin)
    return UserCreated(name=user.name, token=token, admin=user.admin)
