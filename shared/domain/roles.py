"""Who may do what: the three roles of people and API keys, and how a provider's claim names them."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"

    @property
    def can_write(self) -> bool:
        """Clients and mailings may be changed (an admin also manages API keys)."""
        return self in (Role.ADMIN, Role.OPERATOR)

    def includes(self, other: Role) -> bool:
        """Whether this role may do everything `other` may: admin ⊇ operator ⊇ viewer."""
        return _RANK[self] >= _RANK[other]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}

DEFAULT_ROLE_MAP: Mapping[str, Role] = {role.value: role for role in Role}


def claim_values(claims: Mapping[str, object], path: str) -> list[str]:
    """The string values at a dotted claim path (`roles`, `realm_access.roles`); a namespaced claim such
    as `https://example.com/roles` is looked up whole first, since its dots are not a path."""
    if path in claims:
        found: object = claims[path]
    else:
        found = claims
        for part in path.split("."):
            if not isinstance(found, Mapping) or part not in found:
                return []
            found = found[part]
    if isinstance(found, str):
        return [found]
    if isinstance(found, list | tuple):
        return [value for value in found if isinstance(value, str)]
    return []


def role_from_claims(claims: Mapping[str, object], path: str, role_map: Mapping[str, Role]) -> Role | None:
    """The highest role any value of the claim maps to, or None when none of them is known."""
    roles = [role_map[value] for value in claim_values(claims, path) if value in role_map]
    return max(roles, key=_RANK.__getitem__, default=None)
