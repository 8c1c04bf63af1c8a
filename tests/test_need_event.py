"""``vring_need_event`` against the spec's formula (virtio 1.4, 2.7.10 and the vring_need_event helper).

The device model (used buffer notifications), the test driver (available buffer
notifications) and the checks' expectations all call the one function in
``backend.virtio.split_ring``, so a wrong formula there would be agreed on by
everybody. These cases pin it independently: a table worked out by hand, the
spec's expression written out literally, and the window it stands for
(notify when ``event_idx`` is one of the indices ``old .. new-1`` the update moved past).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.virtio.split_ring import vring_need_event
from models.virtio_net.split_engine import RingHooks

ROOT = Path(__file__).resolve().parents[1]
U16 = st.integers(min_value=0, max_value=0xFFFF)


def spec_formula(event_idx: int, new_idx: int, old: int) -> bool:
    """``(u16)(new_idx - event_idx - 1) < (u16)(new_idx - old)``, as the spec writes it."""
    return (new_idx - event_idx - 1) % 65536 < (new_idx - old) % 65536


def passed_indices(new_idx: int, old: int) -> set[int]:
    """The ring indices an update from ``old`` to ``new_idx`` moves past, walked one by one."""
    out: set[int] = set()
    idx = old
    while idx != new_idx:
        out.add(idx)
        idx = (idx + 1) % 65536
    return out


# (event_idx, new_idx, old, notify?) - worked out by hand from "old <= event < new, modulo 2^16".
CASES: list[tuple[int, int, int, bool]] = [
    (0, 1, 0, True),  # one entry: event == old == new - 1
    (5, 10, 5, True),  # event == old
    (9, 10, 5, True),  # event == new - 1
    (7, 10, 5, True),  # inside the window
    (10, 10, 5, False),  # event == new: not yet passed
    (4, 10, 5, False),  # event == old - 1: passed by an earlier update
    (11, 10, 5, False),  # ahead of new
    (7, 7, 7, False),  # new == old: nothing published
    (0, 0, 0, False),
    (6, 5, 5, False),
    (65535, 65535, 65535, False),
    (50, 200, 100, False),  # stale event far behind
    (150, 200, 100, True),
    (300, 200, 100, False),
    # wrap-around at 65535/0
    (65535, 2, 65534, True),
    (0, 2, 65534, True),
    (1, 2, 65534, True),  # event == new - 1 across the wrap
    (65534, 2, 65534, True),  # event == old across the wrap
    (2, 2, 65534, False),  # event == new across the wrap
    (65533, 2, 65534, False),  # event == old - 1 across the wrap
    (65535, 0, 65535, True),  # event == old == new - 1, new wrapped to 0
    (0, 0, 65535, False),  # event == new == 0
    (65534, 0, 65535, False),
    (65535, 0, 65534, True),  # new - 1 == 65535
    (65534, 65535, 65534, True),
    (65535, 65535, 65534, False),
    # the largest window: 65535 entries at once
    (65534, 65535, 0, True),
    (0, 65535, 0, True),
    (65535, 65535, 0, False),
    (65535, 65534, 65535, True),
    (65534, 65534, 65535, False),
    # half the index space
    (65535, 0, 32768, True),
    (32768, 0, 32768, True),
    (32767, 0, 32768, False),
    (0, 0, 32768, False),
]


@pytest.mark.parametrize(("event_idx", "new_idx", "old", "notify"), CASES)
def test_table(event_idx: int, new_idx: int, old: int, notify: bool) -> None:
    assert spec_formula(event_idx, new_idx, old) is notify  # the table itself agrees with the spec
    assert (event_idx in passed_indices(new_idx, old)) is notify
    assert vring_need_event(event_idx, new_idx, old) is notify
    assert RingHooks().used_event_crossed(event_idx, new_idx, old) is notify


@given(U16, U16, U16)
def test_matches_the_spec_formula(event_idx: int, new_idx: int, old: int) -> None:
    assert vring_need_event(event_idx, new_idx, old) is spec_formula(event_idx, new_idx, old)


@given(U16, st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=0xFFFF))
def test_notifies_exactly_for_the_indices_passed(old: int, count: int, event_idx: int) -> None:
    new_idx = (old + count) % 65536
    window = passed_indices(new_idx, old)
    assert vring_need_event(event_idx, new_idx, old) is (event_idx in window)
    assert sum(vring_need_event(e, new_idx, old) for e in window) == count  # every passed index notifies


@pytest.mark.parametrize(("new_idx", "old"), [(2, 65534), (0, 65535), (65535, 0), (0, 32768), (9, 9)])
def test_every_event_index_across_the_wrap(new_idx: int, old: int) -> None:
    window = passed_indices(new_idx, old)
    wrong = [e for e in range(65536) if vring_need_event(e, new_idx, old) is not (e in window)]
    assert not wrong, f"new={new_idx} old={old}: wrong for event_idx {wrong[:10]}"


def test_one_definition_in_the_tree() -> None:
    """Model, driver and checks share the pinned function; a second copy would escape this test."""
    found: list[str] = []
    for top in ("backend", "models", "sim", "testbenches"):
        for path in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno}"
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef | ast.Assign)
                and _defines_need_event(node)
            ]
    assert len(found) == 1 and found[0].startswith("backend/virtio/split_ring.py:"), found


def _defines_need_event(node: ast.AST) -> bool:
    if isinstance(node, ast.FunctionDef):
        return node.name == "vring_need_event"
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == "vring_need_event" for t in node.targets)
    return False
