"""Request and response schemas shared by several routers (each router keeps its own otherwise)."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")

# Ids are PostgreSQL bigints: a larger id in a path names nothing (404), it is not a server error.
MAX_ID = 2**63 - 1


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(ge=0)
    limit: int = Field(ge=1)
    offset: int = Field(ge=0)
