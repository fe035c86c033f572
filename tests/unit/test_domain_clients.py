import sqlite3
from contextlib import closing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.clients import (
    MAX_TAG_LENGTH,
    normalize_phone,
    operator_code_from_phone,
    operator_code_sql,
    resolve_operator_code,
    validate_tag,
    validate_timezone,
)
from shared.domain.errors import DomainValidationError

pytestmark = pytest.mark.unit


class TestPhone:
    def test_phone_string_is_accepted(self) -> None:
        assert normalize_phone("79001234567") == "79001234567"

    def test_phone_given_as_integer_is_accepted(self) -> None:
        assert normalize_phone(79001234567) == "79001234567"

    def test_surrounding_whitespace_is_stripped(self) -> None:
        assert normalize_phone("  79001234567\n") == "79001234567"

    @pytest.mark.parametrize(
        "bad",
        [
            "+79001234567",
            "89001234567",
            "7900123456",
            "790012345678",
            "7900 1234567",
            "7900-123-45-67",
            "",
            "7" + "".join(chr(0x0660 + int(d)) for d in "9001234567"),  # Arabic-Indic digits
            -79001234567,
            7900123456,
        ],
    )
    def test_malformed_phone_is_rejected(self, bad: str | int) -> None:
        with pytest.raises(DomainValidationError) as caught:
            normalize_phone(bad)
        assert caught.value.field == "phone"
        assert "7XXXXXXXXXX" in caught.value.message

    def test_boolean_is_not_a_phone(self) -> None:
        with pytest.raises(DomainValidationError):
            normalize_phone(True)

    @settings(max_examples=100)
    @given(st.from_regex(r"\A7[0-9]{10}\Z"))
    def test_every_well_formed_phone_survives_normalization(self, phone: str) -> None:
        assert normalize_phone(phone) == phone
        assert normalize_phone(int(phone)) == phone


class TestOperatorCode:
    def test_operator_code_is_digits_two_to_four(self) -> None:
        assert operator_code_from_phone("79161234567") == "916"

    def test_missing_operator_code_is_taken_from_phone(self) -> None:
        assert resolve_operator_code("79161234567", None) == "916"

    def test_explicit_operator_code_may_differ_for_ported_numbers(self) -> None:
        assert resolve_operator_code("79161234567", "903") == "903"

    @pytest.mark.parametrize("bad", ["", "91", "9161", "9a6", "\u0669\u0661\u0666", "-91"])
    def test_malformed_operator_code_is_rejected(self, bad: str) -> None:
        with pytest.raises(DomainValidationError) as caught:
            resolve_operator_code("79161234567", bad)
        assert caught.value.field == "operator_code"


class TestTimezone:
    @pytest.mark.parametrize(
        "name", ["Europe/Moscow", "Asia/Vladivostok", "UTC", "America/Argentina/Buenos_Aires", "Etc/GMT-3"]
    )
    def test_iana_names_are_accepted_unchanged(self, name: str) -> None:
        assert validate_timezone(name) == name

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "Local",
            "localtime",
            "Mars/Olympus",
            "Europe/Moskow",
            "europe/moscow",
            " Europe/Moscow",
            "/etc/localtime",
            "../../etc/passwd",
            "Europe/../Europe/Moscow",
            "Europe",
            "Europe/",
            "Europe\x00",
            "+03:00",
        ],
    )
    def test_unknown_or_unsafe_names_are_rejected(self, bad: str) -> None:
        with pytest.raises(DomainValidationError) as caught:
            validate_timezone(bad)
        assert caught.value.field == "timezone"


class TestTag:
    def test_missing_tag_becomes_empty(self) -> None:
        assert validate_tag(None) == ""

    def test_tag_is_stripped(self) -> None:
        assert validate_tag("  vip ") == "vip"

    def test_tag_of_64_characters_is_accepted(self) -> None:
        assert validate_tag("x" * 64) == "x" * 64

    def test_longer_tag_is_rejected(self) -> None:
        with pytest.raises(DomainValidationError) as caught:
            validate_tag("x" * 65)
        assert caught.value.field == "tag"


def test_validation_error_is_a_value_error_naming_its_field() -> None:
    error = DomainValidationError("phone", "bad phone")
    assert isinstance(error, ValueError)
    assert (error.field, error.message) == ("phone", "bad phone")


class TestOperatorCodeInSql:
    @given(st.from_regex(r"7[0-9]{10}", fullmatch=True))
    @settings(max_examples=200)
    def test_the_sql_form_derives_the_code_the_python_rule_does(self, phone: str) -> None:
        # SQLite's substr counts as PostgreSQL's does; the integration suite asks PostgreSQL itself.
        with closing(sqlite3.connect(":memory:")) as conn:
            (code,) = conn.execute(f"SELECT {operator_code_sql('?')}", (phone,)).fetchone()
        assert code == operator_code_from_phone(phone)

    def test_the_code_is_the_three_digits_after_the_country_code(self) -> None:
        assert operator_code_from_phone("79161234567") == "916"
        assert operator_code_sql("clients.phone") == "substr(clients.phone, 2, 3)"


class TestTagRule:
    @pytest.mark.parametrize("bad", ["vip\x00", "a\nb", "\x07", "x\ud800"])
    def test_control_characters_and_lone_surrogates_are_rejected(self, bad: str) -> None:
        with pytest.raises(DomainValidationError) as caught:
            validate_tag(bad)
        assert caught.value.field == "tag"

    def test_a_tag_of_spaces_is_no_tag(self) -> None:
        assert validate_tag("   ") == ""

    @given(st.text(max_size=80))
    def test_every_accepted_tag_is_stripped_short_and_printable_enough_to_store(self, text: str) -> None:
        try:
            tag = validate_tag(text)
        except DomainValidationError:
            return
        assert tag == tag.strip() and len(tag) <= MAX_TAG_LENGTH
        assert "\x00" not in tag
        tag.encode("utf-8")
