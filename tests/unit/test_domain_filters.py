import pytest

from shared.domain.filters import ClientFilter

pytestmark = pytest.mark.unit


def test_empty_filter_matches_every_client() -> None:
    empty = ClientFilter()
    assert empty.is_empty
    assert empty.matches("", "916")
    assert empty.matches("vip", "903")


def test_tag_filter_matches_any_of_its_tags() -> None:
    f = ClientFilter(tags=frozenset({"vip", "new"}))
    assert not f.is_empty
    assert f.matches("vip", "916")
    assert f.matches("new", "903")
    assert not f.matches("old", "916")
    assert not f.matches("", "916")


def test_operator_filter_matches_any_of_its_codes() -> None:
    f = ClientFilter(operator_codes=frozenset({"916", "903"}))
    assert f.matches("", "916")
    assert f.matches("vip", "903")
    assert not f.matches("vip", "999")


def test_client_must_satisfy_every_property_the_filter_names() -> None:
    f = ClientFilter(tags=frozenset({"vip"}), operator_codes=frozenset({"916"}))
    assert f.matches("vip", "916")
    assert not f.matches("vip", "903")
    assert not f.matches("new", "916")
