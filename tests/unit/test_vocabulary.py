"""The vocabulary lives in `shared/domain`: no other module of `services/` or `shared/` spells a status or a
mailing event as a string literal, in Python, SQL, templates or scripts. The migrations keep theirs: they
record the schema as it was when they ran. And no module there reaches into another's private attributes
(a library's least of all)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.domain.statuses import MailingEventType, MailingStatus, MessageStatus, ReportStatus

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
OWNERS = ("shared/domain/", "shared/migrations/")
TEXT_SUFFIXES = frozenset({".html", ".txt", ".js", ".sql"})

STATUSES = frozenset(s.value for words in (MessageStatus, MailingStatus, ReportStatus) for s in words)
ROUTING_KEYS = frozenset(e.routing_key for e in MailingEventType)
# "created", "updated", ...: also ordinary field names (an import's `created` count) and CSS classes, so a
# dict key of that spelling is a field, and templates may use them; anywhere else in Python it is an event.
EVENT_WORDS = frozenset(e.value for e in MailingEventType) - STATUSES


def _quoted(words: frozenset[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"""(["'])({alternatives})\1""")


QUOTED_IN_TEXT = _quoted(STATUSES | ROUTING_KEYS)
QUOTED_IN_PYTHON = _quoted(STATUSES | ROUTING_KEYS | EVENT_WORDS)


def _files() -> Iterator[Path]:
    for top in ("services", "shared"):
        for path in sorted((ROOT / top).rglob("*")):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and not relative.startswith(OWNERS):
                yield path


def _python_literals(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    dict_keys = {id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str | bytes):
            continue
        value = node.value.decode(errors="replace") if isinstance(node.value, bytes) else node.value
        word = value in STATUSES | ROUTING_KEYS or (value in EVENT_WORDS and id(node) not in dict_keys)
        if word or QUOTED_IN_PYTHON.search(value):
            yield node.lineno, value


def _literals() -> Iterator[str]:
    for path in _files():
        relative = path.relative_to(ROOT).as_posix()
        if path.suffix == ".py":
            for line, value in _python_literals(path):
                yield f"{relative}:{line}: {value[:80]!r}"
        elif path.suffix in TEXT_SUFFIXES:
            for line, text in enumerate(path.read_text().splitlines(), 1):
                if QUOTED_IN_TEXT.search(text):
                    yield f"{relative}:{line}: {text.strip()[:80]}"


def test_no_status_or_event_literal_outside_the_domain_and_the_migrations() -> None:
    assert list(_literals()) == []


@pytest.mark.parametrize(
    "source",
    [
        'status == "sent"',
        "f\"WHERE status = 'queued'\"",
        'b\'{"status": "retrying"}\'',
        'mailing_event("created", 1, now)',
        "key = 'mailing.paused'",
    ],
)
def test_the_check_finds_a_literal_in_any_of_its_forms(source: str, tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text(source + "\n")
    assert [line for line, _ in _python_literals(module)] == [1]


def test_a_dict_key_spelled_like_an_event_is_a_field_name(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text('example = {"created": 99_000, "updated": 998}\n')
    assert list(_python_literals(module)) == []


def _private_accesses(path: Path) -> Iterator[tuple[int, str]]:
    """`x._name` where `_name` is not this module's own (a method or an attribute its classes set): the
    classes of one module may work together (a connection and its pool); nothing else reaches in."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    own |= {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
        if isinstance(node.value, ast.Name) and node.value.id == "self"
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")) or name in own:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        yield node.lineno, ast.unparse(node)


def test_no_module_reaches_into_another_objects_private_attributes() -> None:
    # A library's private parts (aiohttp's payload internals, loguru's `_core`) change in a minor release
    # without a word; our own objects keep theirs to themselves too.
    found = [
        f"{path.relative_to(ROOT).as_posix()}:{line}: {text}"
        for path in _files()
        if path.suffix == ".py"
        for line, text in _private_accesses(path)
    ]
    assert found == []


def test_the_admin_charts_colour_exactly_the_message_statuses() -> None:
    """The one place outside `shared/domain` that names statuses (as bare object keys, which the literal
    check above cannot tell from code): a status added or renamed there must be coloured here too."""
    script = (ROOT / "services/api/admin/static/app.js").read_text()
    colours = re.search(r"const COLORS = \{(.*?)\};", script, re.S)
    assert colours is not None, "app.js no longer has its COLORS map: update this test"
    keys = set(re.findall(r"(\w+)\s*:", colours.group(1)))
    assert keys == {s.value for s in MessageStatus}
