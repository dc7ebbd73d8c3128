"""check_envelope: the first checks of every saved dynft state, one message each."""

from __future__ import annotations

import pytest

from dynft_core.state_check import check_envelope

KEYS = ("format", "version", "a", "b")
GOOD = {"format": "f", "version": 3, "a": 1, "b": 2}


def test_a_good_state_is_returned_unchanged():
    assert check_envelope(dict(GOOD), "thing", KEYS, 3, "f") == GOOD


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([1, 2], "a thing state must be a dict, got list"),
        ({**GOOD, "format": "g"}, "not a f state of version 3: got format 'g', version 3"),
        ({**GOOD, "version": 2}, "not a f state of version 3: got format 'f', version 2"),
        ({k: v for k, v in GOOD.items() if k != "a"}, "invalid thing state: 'a' is missing"),
        ({**GOOD, "c": 0}, "invalid thing state: 'c' is unknown"),
    ],
)
def test_each_problem_has_its_own_message(state, message):
    with pytest.raises(ValueError) as caught:
        check_envelope(state, "thing", KEYS, 3, "f")
    assert str(caught.value) == message


def test_without_a_format_the_version_is_named():
    with pytest.raises(ValueError, match=r"unsupported thing state version 1; expected 2"):
        check_envelope({"version": 1}, "thing", ("version",), 2)
