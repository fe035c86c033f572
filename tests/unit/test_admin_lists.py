"""The admin lists' bounds: a phone prefix as an index range, pages within the first PAGED_ROWS rows."""

import pytest

from services.api.admin.pages import PAGED_ROWS, _offset, _pages
from services.api.clients_service import next_prefix

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("digits", "upper"),
    [("7916", "7917"), ("7919", "792"), ("7", "8"), ("79999", "8"), ("999", None), ("0", "1")],
)
def test_a_phone_prefix_ends_before_the_next_one(digits: str, upper: str | None) -> None:
    assert next_prefix(digits) == upper
    if upper is not None:
        # Every phone starting with `digits` sorts in [digits, upper), and none starting otherwise.
        assert digits + "0" * 6 < upper and digits + "9" * 6 < upper


def test_pages_go_no_further_than_the_paged_rows() -> None:
    last = PAGED_ROWS // 25
    assert _pages(300_000, 25, 10**6) == {
        "page": last,
        "pages": last,
        "total": 300_000,
        "size": 25,
        "more": False,
        "limited": True,
        "paged": PAGED_ROWS,
    }
    assert _offset(10**6, 25) == (last - 1) * 25
    assert _pages(60, 25, 2)["limited"] is False and _offset(2, 25) == 25
    capped = _pages(PAGED_ROWS, 50, 1, more=True)
    assert capped["more"] is True and capped["limited"] is True and capped["pages"] == PAGED_ROWS // 50
