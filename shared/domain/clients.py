import re
import unicodedata
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from shared.domain.errors import DomainValidationError

PHONE_PATTERN = r"^7\d{10}$"
MAX_TAG_LENGTH = 64

# ASCII: a bare \d would also accept Arabic-Indic and other Unicode digits.
_PHONE_RE = re.compile(PHONE_PATTERN, re.ASCII)
_OPERATOR_CODE_RE = re.compile(r"[0-9]{3}", re.ASCII)
# Present in some tzdata installs, but they describe the host, not a place.
_NOT_PLACES = frozenset({"", "Local", "localtime", "Factory", "posixrules", "leapseconds"})


def _shorten(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


def normalize_phone(value: str | int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DomainValidationError("phone", "phone must be a string or an integer like 79001234567")
    text = str(value).strip()
    if not _PHONE_RE.fullmatch(text):
        raise DomainValidationError(
            "phone", f"phone must be 7 followed by 10 digits (7XXXXXXXXXX), got {_shorten(text)!r}"
        )
    return text


# A phone's operator code: the three digits after the country code 7 (7 916 1234567 -> 916).
_CODE_START, _CODE_LENGTH = 1, 3


def operator_code_from_phone(phone: str) -> str:
    return phone[_CODE_START : _CODE_START + _CODE_LENGTH]


def operator_code_sql(phone: str) -> str:
    """`operator_code_from_phone` as an SQL expression over the column or parameter `phone`."""
    # SQL's substr counts from 1.
    return f"substr({phone}, {_CODE_START + 1}, {_CODE_LENGTH})"


def resolve_operator_code(phone: str, operator_code: str | None) -> str:
    if operator_code is None:
        return operator_code_from_phone(phone)
    code = operator_code.strip()
    if not _OPERATOR_CODE_RE.fullmatch(code):
        raise DomainValidationError(
            "operator_code", f"operator code must be exactly 3 digits, got {_shorten(operator_code)!r}"
        )
    return code


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def validate_timezone(name: str) -> str:
    problem = f"unknown timezone {_shorten(name)!r}; use an IANA name such as Europe/Moscow"
    if (
        not isinstance(name, str)
        or name in _NOT_PLACES
        or name != name.strip()
        or ".." in name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
    ):
        raise DomainValidationError("timezone", problem)
    try:
        ZoneInfo(name)
    except (ValueError, OSError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise DomainValidationError("timezone", problem) from exc
    if name not in _known_zones():
        raise DomainValidationError("timezone", problem)
    return name


def validate_tag(tag: str | None) -> str:
    """The one tag rule (client rows, CSV import, mailing filters): free text, stripped, at most
    MAX_TAG_LENGTH characters, nothing PostgreSQL text cannot hold; no tag is the empty one."""
    if tag is None:
        return ""
    value = tag.strip()
    if len(value) > MAX_TAG_LENGTH:
        raise DomainValidationError("tag", f"tag must be at most {MAX_TAG_LENGTH} characters")
    # PostgreSQL text cannot hold NUL, and control characters in a label are always a mistake.
    if not value.isprintable() and any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise DomainValidationError("tag", "tag must not contain control characters")
    return value
