"""How long the checks wait on this session's target: one time scale, measured at bring-up.

The checks' bounds are written for a target at full speed (a card, the behavioral model, the RTL on Verilator):
"a used element within 1 s", "no interrupt within 50 ms". A design on a slow simulator (the RTL on Icarus runs
some fifteen times slower than on Verilator) does the same work in many times that, and a fixed bound would judge
its speed, not its conformance. :class:`Deadlines` holds the session's *time scale* and is the one place a bound
is scaled:

* :meth:`Deadlines.wait` -- a bound on waiting for something that must happen (an interrupt, a used element, a
  control command's ack). Paid in full only when the device misbehaves. A wait for a batch of used elements
  (the rig's ``wait_used_idx`` and ``complete``) bounds each step, not the batch: every element that comes starts
  the bound again, so a long batch on a target slowed by load after its calibration is not cut off.
* :meth:`Deadlines.silence` -- how long "nothing arrives" is watched for (no interrupt, no extra used element).
  Scaled as well: on a slow target a late interrupt would otherwise land after the window and pass for silence.

The scale comes from the target (``checks/conftest.py`` builds it once per session, before the first check):

* calibrated: :func:`testbenches.conformance.harness.calibrate` times a one-chain round trip on a fresh device
  (doorbell to used element, the used index polled so a missing interrupt does not matter) and a few register
  reads; :func:`scale_of` turns the median round trip into a scale against :data:`FULL_SPEED_ROUND_TRIP` (the
  register reads against :data:`FULL_SPEED_READ` when the chain never came back);
* declared: a device object with a ``time_scale`` attribute, or whose abilities have one (``rtl:...,sim=icarus``,
  ``vfio-user:PATH,slowdown=N``), sets a floor (:func:`declared_scale`).

Bounded to :data:`MIN_SCALE` .. :data:`MAX_SCALE`; a full-speed target gets exactly 1, its bounds unchanged.
A check that runs out of a bound says how long it waited and why (:meth:`Deadlines.explain`).

Scaling bounds makes a slow target pass what it does right; it does not make it fast. A few checks move tens of
thousands of chains (crossing the 16-bit ring index needs 65,536): minutes on a full-speed target, hours on Icarus.
:meth:`Deadlines.unaffordable` estimates such a check's time from the session's speed and, on a slow target, above
the per-check *budget* (:data:`DEFAULT_BUDGET`, ``vdpa-bench run --check-budget SECONDS``) gives the reason the
check reports its ids *not applicable* with: the estimate, the budget and how to raise it. A full-speed target
(time scale 1) runs every check whatever its size.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

MIN_SCALE = 1.0
#: The largest scale: a check's one-second bound is then a bit over three minutes.
MAX_SCALE = 200.0
#: A one-chain round trip (doorbell to used element) this long or shorter is a target at full speed (scale 1).
#: The behavioral model and the RTL on Verilator take 0.1-0.3 ms, a model behind vfio-user about 1 ms; the RTL on
#: Icarus tens of milliseconds.
FULL_SPEED_ROUND_TRIP = 0.002
#: The same for one common-cfg register read, used only when no round trip could be timed (the model and Verilator
#: 0.05 ms, vfio-user about 1 ms, Icarus about 6 ms).
FULL_SPEED_READ = 0.0005
#: Seconds a single check may be expected to take on a slow target before it is left out (not applicable, with
#: the estimate); ``--check-budget`` changes it.
DEFAULT_BUDGET = 600.0


def seconds(value: float) -> str:
    """``value`` seconds as the evidence prints it: ``12 s``, ``0.05 s``, ``7.15 s``."""
    return f"{round(value, 3):g} s"


@dataclass(frozen=True)
class Calibration:
    """What the bring-up measurement found: the median one-chain round trip and register read (seconds; None when
    not measured) and, when the round trip is missing, why."""

    round_trip: float | None
    register_read: float | None
    rounds: int = 0
    note: str = ""

    @classmethod
    def of(cls, round_trips: Sequence[float], reads: Sequence[float], note: str = "") -> Calibration:
        """From the single measurements (the median of each, robust to a scheduling hiccup)."""
        return cls(statistics.median(round_trips) if round_trips else None,
                   statistics.median(reads) if reads else None, len(round_trips), note)

    def describe(self) -> str:
        parts = []
        if self.round_trip is not None:
            parts.append(f"one-chain round trip {self.round_trip * 1e3:.3g} ms (median of {self.rounds}; full speed "
                         f"<= {FULL_SPEED_ROUND_TRIP * 1e3:g} ms)")
        if self.register_read is not None:
            parts.append(f"register read {self.register_read * 1e3:.3g} ms (full speed <= {FULL_SPEED_READ * 1e3:g}"
                         " ms)")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts) or "nothing measured"


def scale_of(cal: Calibration) -> float:
    """The time scale a calibration calls for: the round trip against :data:`FULL_SPEED_ROUND_TRIP` (else the
    register read against :data:`FULL_SPEED_READ`, else 1), bounded and rounded to one decimal."""
    if cal.round_trip is not None:
        raw = cal.round_trip / FULL_SPEED_ROUND_TRIP
    elif cal.register_read is not None:
        raw = cal.register_read / FULL_SPEED_READ
    else:
        raw = MIN_SCALE
    return bounded(raw)


def bounded(scale: float) -> float:
    """``scale`` within :data:`MIN_SCALE` .. :data:`MAX_SCALE`, one decimal (what the evidence prints)."""
    return round(min(MAX_SCALE, max(MIN_SCALE, scale)), 1)


def declared_scale(device: object) -> float:
    """The slowdown a device declares (its own ``time_scale`` attribute or its abilities'), 1 when none."""
    found = [MIN_SCALE]
    for owner in (device, _abilities(device)):
        value = getattr(owner, "time_scale", None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append(float(value))
    return max(found)


def _abilities(device: object) -> object:
    get = getattr(device, "abilities", None)
    return get() if callable(get) else None


@dataclass(frozen=True)
class Deadlines:
    """The session's bounds: nominal seconds (as on a target at full speed) times :attr:`scale`.

    ``target`` and ``basis`` are for the evidence (``12 s (1 s x time scale 12 of rtl:virtio-net,sim=icarus,
    calibrated at bring-up)``); ``detail`` says what was measured or declared."""

    scale: float = MIN_SCALE
    target: str = "the target"
    basis: str = "nominal"
    detail: str = ""
    #: the calibrated one-chain round trip (s), None when not measured
    round_trip: float | None = None
    #: seconds one check may be expected to take on a slow target (:meth:`unaffordable`)
    budget: float = DEFAULT_BUDGET

    @classmethod
    def calibrated(cls, target: str, cal: Calibration, declared: float = MIN_SCALE,
                   budget: float = DEFAULT_BUDGET) -> Deadlines:
        """The deadlines of ``target`` from its bring-up measurement, at least its ``declared`` slowdown."""
        own = cls(scale_of(cal), target, "calibrated at bring-up", f"calibrated at bring-up: {cal.describe()}",
                  cal.round_trip, budget)
        return own.at_least(declared)

    def chain_seconds(self) -> float:
        """What one chain costs here, for estimates: the calibrated round trip, at least a full-speed round trip
        times the scale (a declared slowdown above the measured one counts)."""
        return max(self.round_trip or 0.0, FULL_SPEED_ROUND_TRIP * self.scale)

    def unaffordable(self, chains: int, what: str) -> str | None:
        """None when a check moving ``chains`` chains runs here; else why it does not (its ids are then reported
        *not applicable* with this): only a slow target (time scale above 1) whose estimate exceeds the budget."""
        if self.scale <= MIN_SCALE:
            return None
        estimate = chains * self.chain_seconds()
        if estimate <= self.budget:
            return None
        return (f"{what} moves {chains} chains: at {self.chain_seconds() * 1e3:.3g} ms a chain on {self.target} "
                f"(time scale {self.scale:g}, {self.basis}) about {estimate / 60:.0f} min, above the per-check budget "
                f"of {seconds(self.budget)} (vdpa-bench run --check-budget SECONDS includes it)")

    def at_least(self, declared: float) -> Deadlines:
        """These deadlines, with the target's declared slowdown as a floor."""
        floor = bounded(declared)
        if floor <= self.scale:
            return self
        note = f"declared by the target: {floor:g}"
        detail = f"{note}, above {self.scale:g} {self.detail}" if self.detail else note
        return replace(self, scale=floor, basis="declared by the target", detail=detail)

    def wait(self, nominal: float) -> float:
        """The bound, on this target, of a wait for something that must happen within ``nominal`` s at full speed."""
        return nominal * self.scale

    def silence(self, nominal: float) -> float:
        """How long, on this target, "nothing arrives" is watched for where ``nominal`` s do at full speed."""
        return nominal * self.scale

    def explain(self, nominal: float) -> str:
        """How long a bound of ``nominal`` s is here, and why: ``12 s (1 s x time scale 12 of T, calibrated at
        bring-up)``."""
        return (f"{seconds(self.wait(nominal))} ({seconds(nominal)} x time scale {self.scale:g} of {self.target}, "
                f"{self.basis})")

    def missed(self, what: str, nominal: float) -> str:
        """Evidence for a wait that ran out: ``no used element within 12 s (1 s x time scale 12 of ...)``."""
        return f"{what} within {self.explain(nominal)}"

    def silent(self, nominal: float) -> str:
        """Evidence for a watched silence: ``silent for 1 s (0.05 s x time scale 20 of ...)``."""
        return f"silent for {self.explain(nominal)}"

    def describe(self) -> str:
        """One line for the session's report."""
        return f"time scale {self.scale:g} of {self.target} ({self.detail or self.basis})"


#: The bounds as written (time scale 1): the default of helpers that tests also call outside a session.
NOMINAL = Deadlines()
