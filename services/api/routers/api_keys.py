from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, status
from pydantic import BaseModel, Field
from sqlalchemy import select, update

from services.api.auth import hash_key, new_key
from services.api.deps import AdminDep, SessionDep
from services.api.errors import NotFound
from services.api.schemas import MAX_ID
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
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_api_key(body: ApiKeyCreate, session: SessionDep, _: AdminDep) -> ApiKeyCreated:
    """Create an API key. The key is returned once; only its hash is stored."""
    key = new_key()
    row = ApiKey(name=body.name, role=body.role, key_hash=hash_key(key), prefix=key[:8])
    session.add(row)
    await session.commit()
    return ApiKeyCreated(**_out(row).model_dump(), key=key)


@router.get("")
async def list_api_keys(session: SessionDep, _: AdminDep) -> list[ApiKeyOut]:
    """Every API key, revoked ones included (never the keys themselves)."""
    rows = (await session.scalars(select(ApiKey).order_by(ApiKey.id))).all()
    return [_out(r) for r in rows]


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(key_id: int, session: SessionDep, _: AdminDep) -> None:
    """Revoke an API key: it stops working at once."""
    if not 1 <= key_id <= MAX_ID:
        raise NotFound("api key", key_id)
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .returning(ApiKey.id)
    )
    if result.scalar_one_or_none() is None:
        raise NotFound("api key", key_id)
    await session.commit()
