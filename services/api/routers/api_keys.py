from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from services.api import api_keys_service
from services.api.auth import Principal
from services.api.deps import AdminDep, KeyCacheDep, SessionDep
from shared.domain.roles import Role
from shared.models import ApiKey

router = APIRouter(prefix="/api-keys", tags=["api-keys"])


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, examples=["reporting dashboard"])
    role: Role = Field(
        default=Role.OPERATOR,
        description="admin: everything; operator: clients and mailings; viewer: reads only",
    )


class ApiKeyOut(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="When it last authenticated a request (to the minute)")


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself; shown only now, stored hashed")


def _out(row: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _by(principal: Principal) -> str:
    return principal.actor


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_api_key(body: ApiKeyCreate, session: SessionDep, principal: AdminDep) -> ApiKeyCreated:
    """Create an API key. The key is returned once; only its hash is stored."""
    row, key = await api_keys_service.create_key(session, body.name, body.role, _by(principal))
    await session.commit()
    return ApiKeyCreated(**_out(row).model_dump(), key=key)


@router.get("")
async def list_api_keys(session: SessionDep, _: AdminDep) -> list[ApiKeyOut]:
    """Every API key, revoked ones included (never the keys themselves)."""
    return [_out(r) for r in await api_keys_service.list_keys(session)]


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(
    key_id: int, session: SessionDep, principal: AdminDep, key_cache: KeyCacheDep
) -> None:
    """Revoke an API key: it stops working at once on this replica, within seconds on the others."""
    await api_keys_service.revoke_key(session, key_id, _by(principal))
    await session.commit()
    key_cache.clear()
