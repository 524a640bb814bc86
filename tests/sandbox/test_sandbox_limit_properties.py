"""Property checks of the message limits right at and around Discord's boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox import ApiError
from sandbox.limits import check_message


@given(st.integers(1, 2100))
def test_content_limit_is_exactly_2000(length: int) -> None:
    body = {"content": "a" * length}
    if length <= 2000:
        check_message(body, has_files=False, creating=True)
    else:
        with pytest.raises(ApiError) as rejected:
            check_message(body, has_files=False, creating=True)
        assert rejected.value.code == 50035 and "content" in (rejected.value.errors or {})


@given(st.lists(st.text(min_size=0, max_size=110), min_size=1, max_size=5))
def test_custom_ids_must_be_1_to_100_and_unique(custom_ids: list[str]) -> None:
    row = {"type": 1, "components": [{"type": 2, "style": 1, "label": "x", "custom_id": c}
                                     for c in custom_ids]}
    valid = all(1 <= len(c) <= 100 for c in custom_ids) and len(set(custom_ids)) == len(
        custom_ids)
    if valid:
        check_message({"components": [row]}, has_files=False, creating=True)
    else:
        with pytest.raises(ApiError):
            check_message({"components": [row]}, has_files=False, creating=True)
