"""Running a hypothesis property inside a check: what made it fail, as evidence text.

A check's property raises AssertionError with the rule it saw broken. Hypothesis then shrinks and replays the
failing example; on a device whose behaviour depends on timing the replay can pass, and hypothesis raises
:class:`~hypothesis.errors.FlakyFailure` instead. That is still a failure the device showed once: the evidence is
the original assertion, said to be timing dependent, never an error that hides which rule broke.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis.errors import FlakyFailure

#: Said of a failure hypothesis could not reproduce.
NOT_REPRODUCED = " (it did not fail again when hypothesis replayed it: the device's behaviour depends on timing)"


def falsified(run: Callable[[], None]) -> tuple[str, str]:
    """Run the property ``run``: ('', '') when it held, otherwise why it did not and :data:`NOT_REPRODUCED` or ''."""
    try:
        run()
    except AssertionError as exc:
        return str(exc) or "assertion failed", ""
    except FlakyFailure as group:
        first = next((str(e) for e in group.exceptions if isinstance(e, AssertionError)), str(group))
        return first, NOT_REPRODUCED
    return "", ""
