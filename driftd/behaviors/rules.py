"""The rules that decide what a behaviour candidate does to a user's behaviours.

Pure functions over plain values (no I/O): :func:`decide` takes a candidate and
the user's active behaviours of the same intent and returns a :class:`Decision`;
the store applies it.

- Decay: effective credibility = stored × 0.5^(days since last seen / half-life).
- Conflict: an active behaviour of the same intent whose cosine similarity to the
  candidate is at least ``conflict_similarity``, or that has the same (non-empty)
  target and the same context; the most similar one is the one compared.
- Identical (same polarity, same target and context or similarity at least
  ``identical_similarity``): REINFORCE. The last-seen time is refreshed and the
  credibility becomes 1 - (1 - effective old)(1 - candidate), the noisy-OR of
  two independent pieces of evidence, so it rises but stays below 1.
- Otherwise, candidate credibility > effective old: SUPERSEDE.
- Otherwise IGNORE, recording a drift signal on the old behaviour; when the
  signals within ``signal_window_days`` (this one included) reach
  ``signals_to_supersede``, SUPERSEDE anyway, with the noisy-OR of those
  signals' credibilities as the new behaviour's: repeated weak evidence adds up.
- No conflict: INSERT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SECONDS_PER_DAY = 86_400.0
#: Drift signals kept per behaviour (the most recent).
MAX_SIGNALS = 32

INSERT = "insert"
REINFORCE = "reinforce"
SUPERSEDE = "supersede"
IGNORE = "ignore"


@dataclass(frozen=True)
class Policy:
    """Tunable rules; defaults as documented in the BehaviorService proto."""

    half_life_days: float = 180.0
    conflict_similarity: float = 0.55
    identical_similarity: float = 0.9
    signal_window_days: float = 30.0
    signals_to_supersede: int = 3


@dataclass(frozen=True)
class Signal:
    """A drift signal: a weaker conflicting candidate at ``time`` (epoch seconds)."""

    time: float
    credibility: float


@dataclass(frozen=True)
class Behavior:
    """A stored behaviour. Times are epoch seconds; ``vector`` (d,) float32, unit length."""

    id: str
    user_id: str
    intent: str
    target: str
    context: str
    polarity: str
    text: str
    vector: np.ndarray
    credibility: float
    state: str  # "active" | "superseded"
    create_time: float
    last_seen_time: float
    seen_count: int = 1
    supersede_time: float | None = None
    superseded_by: str = ""
    supersedes: str = ""
    signals: tuple[Signal, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """A validated candidate; ``vector`` (d,) float32, unit length."""

    intent: str
    target: str
    context: str
    polarity: str
    credibility: float
    text: str
    vector: np.ndarray


@dataclass(frozen=True)
class Decision:
    """What to do with a candidate.

    ``old`` is the conflicting active behaviour (None for INSERT);
    ``new_credibility`` the credibility to store for the new or reinforced
    behaviour; ``signals`` the old behaviour's signals after this decision
    (IGNORE); ``signal_count`` the signals within the window.
    """

    action: str
    reason: str
    old: Behavior | None
    effective_credibility: float
    similarity: float
    new_credibility: float
    drift_detected: bool
    signals: tuple[Signal, ...] = ()
    signal_count: int = 0


def effective_credibility(b: Behavior, at: float, policy: Policy) -> float:
    """stored × 0.5^(days since last seen / half-life); no growth for ``at`` in the past."""
    days = max(0.0, at - b.last_seen_time) / SECONDS_PER_DAY
    return float(b.credibility * 0.5 ** (days / policy.half_life_days))


def _same_slot(c: Candidate, b: Behavior) -> bool:
    return (
        bool(c.target)
        and _norm(c.target) == _norm(b.target)
        and _norm(c.context) == _norm(b.context)
    )


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def decide(c: Candidate, active: Sequence[Behavior], at: float, policy: Policy) -> Decision:
    """The decision for candidate ``c`` at time ``at`` (epoch seconds) against the
    user's ``active`` behaviours of the same intent and dimension."""
    best: tuple[float, float, Behavior] | None = None
    for b in active:
        sim = float(np.dot(c.vector, b.vector))
        if sim >= policy.conflict_similarity or _same_slot(c, b):
            key = (sim, effective_credibility(b, at, policy), b)
            if best is None or key[:2] > best[:2]:
                best = key
    if best is None:
        return Decision(
            INSERT,
            "no active behaviour of this intent conflicts "
            f"(similarity < {policy.conflict_similarity} and no same target/context)",
            None,
            0.0,
            0.0,
            c.credibility,
            False,
        )
    sim, eff, old = best
    if c.polarity == old.polarity and (sim >= policy.identical_similarity or _same_slot(c, old)):
        new = 1.0 - (1.0 - eff) * (1.0 - c.credibility)
        return Decision(
            REINFORCE,
            f"same behaviour seen again (similarity {sim:.3f}); credibility {eff:.3f} -> {new:.3f}",
            old,
            eff,
            sim,
            new,
            False,
        )
    if c.credibility > eff:
        return Decision(
            SUPERSEDE,
            f"candidate credibility {c.credibility:.3f} > effective credibility "
            f"{eff:.3f} of the conflicting behaviour (similarity {sim:.3f})",
            old,
            eff,
            sim,
            c.credibility,
            True,
        )
    window = policy.signal_window_days * SECONDS_PER_DAY
    signals = (*old.signals, Signal(at, c.credibility))[-MAX_SIGNALS:]
    recent = [s for s in signals if at - window <= s.time <= at]
    if len(recent) >= policy.signals_to_supersede:
        combined = 1.0 - float(np.prod([1.0 - s.credibility for s in recent]))
        return Decision(
            SUPERSEDE,
            f"{len(recent)} drift signals within {policy.signal_window_days:g} days "
            f"(>= {policy.signals_to_supersede}) force a supersede although the candidate "
            f"({c.credibility:.3f}) is weaker than the behaviour ({eff:.3f})",
            old,
            eff,
            sim,
            combined,
            True,
            signal_count=len(recent),
        )
    return Decision(
        IGNORE,
        f"candidate credibility {c.credibility:.3f} <= effective credibility {eff:.3f} "
        f"of the conflicting behaviour; drift signal {len(recent)} of "
        f"{policy.signals_to_supersede} within {policy.signal_window_days:g} days",
        old,
        eff,
        sim,
        0.0,
        True,
        signals=signals,
        signal_count=len(recent),
    )
