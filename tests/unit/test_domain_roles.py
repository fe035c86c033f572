from __future__ import annotations

import pytest

from shared.domain.roles import DEFAULT_ROLE_MAP, Role, claim_values, role_from_claims

pytestmark = pytest.mark.unit


def test_each_role_includes_the_ones_below_it() -> None:
    assert Role.ADMIN.includes(Role.OPERATOR) and Role.ADMIN.includes(Role.VIEWER)
    assert Role.OPERATOR.includes(Role.VIEWER) and not Role.OPERATOR.includes(Role.ADMIN)
    assert not Role.VIEWER.includes(Role.OPERATOR)


def test_only_admins_and_operators_write() -> None:
    assert [role for role in Role if role.can_write] == [Role.ADMIN, Role.OPERATOR]


def test_a_dotted_claim_path_reaches_into_nested_claims() -> None:
    claims = {"realm_access": {"roles": ["offline_access", "operator"]}, "roles": "viewer"}
    assert claim_values(claims, "realm_access.roles") == ["offline_access", "operator"]
    assert claim_values(claims, "roles") == ["viewer"]
    assert claim_values(claims, "realm_access.missing") == []
    assert claim_values(claims, "roles.deeper") == []


def test_a_namespaced_claim_with_dots_is_looked_up_whole() -> None:
    claims = {"https://mailing.example.com/roles": ["admin"]}
    assert claim_values(claims, "https://mailing.example.com/roles") == ["admin"]


def test_the_highest_mapped_role_wins_and_unknown_values_give_none() -> None:
    assert role_from_claims({"roles": ["viewer", "admin"]}, "roles", DEFAULT_ROLE_MAP) is Role.ADMIN
    assert role_from_claims({"roles": ["root", 7]}, "roles", DEFAULT_ROLE_MAP) is None
    assert role_from_claims({}, "roles", DEFAULT_ROLE_MAP) is None
    mapped = {"mailing-team@example.com": Role.OPERATOR}
    assert role_from_claims({"email": "mailing-team@example.com"}, "email", mapped) is Role.OPERATOR
