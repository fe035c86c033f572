"""`limit` / `offset` query parameters, bounded by `MAILING_MAX_PAGE_SIZE`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query
from fastapi.exceptions import RequestValidationError

from services.api.deps import SettingsDep

# PostgreSQL's OFFSET is a bigint; anything larger would be a server error, not an empty page.
MAX_OFFSET = 2**63 - 1


@dataclass(frozen=True)
class Pagination:
    limit: int
    offset: int


def get_pagination(
    settings: SettingsDep,
    limit: Annotated[
        int, Query(ge=1, description="Page size (at most MAILING_MAX_PAGE_SIZE, 500 by default)")
    ] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip")] = 0,
) -> Pagination:
    if limit > settings.max_page_size:
        raise RequestValidationError(
            [
                {
                    "type": "less_than_equal",
                    "loc": ("query", "limit"),
                    "msg": f"Input should be less than or equal to {settings.max_page_size}",
                    "input": limit,
                    "ctx": {"le": settings.max_page_size},
                }
            ]
        )
    return Pagination(limit, offset)


PaginationDep = Annotated[Pagination, Depends(get_pagination)]
