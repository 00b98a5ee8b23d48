"""The behaviour rules, as pure functions (no server)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from driftd.behaviors import rules
from driftd.behaviors.rules import Behavior, Candidate, Policy

DAY = rules.SECONDS_PER_DAY
X = np.array([1.0, 0.0, 0.0], dtype=np.float32)


def behavior(cred=0.9, seen=0.0, polarity="positive", vector=X, **kw) -> Behavior:
    return Behavior(
        id="old",
        user_id="u",
        intent="preference",
        target="coffee",
        context="",
        polarity=polarity,
        text="",
        vector=vector,
        credibility=cred,
        state="active",
        create_time=seen,
        last_seen_time=seen,
        **kw,
    )


def candidate(cred, polarity="negative", vector=X, target="coffee") -> Candidate:
    return Candidate("preference", target, "", polarity, cred, "", vector)


@pytest.mark.parametrize(
    ("half_life", "days", "expected"),
    [
        (180, 180, 0.45),
        (180, 365, 0.2207),  # the default half-life: 0.9 · 0.5^(365/180)
        (180, 730, 0.0541),
        (365, 365, 0.45),  # the figures: one halving per 365 days
        (365, 730, 0.225),
    ],
)
def test_decay(half_life, days, expected):
    b = behavior(0.9)
    got = rules.effective_credibility(b, days * DAY, Policy(half_life_days=half_life))
    assert got == pytest.approx(expected, abs=5e-4)


def test_insert_reinforce_supersede():
    p = Policy()
    unrelated = candidate(0.5, vector=np.array([0, 1, 0], np.float32), target="tea")
    assert rules.decide(unrelated, [behavior()], 0.0, p).action == rules.INSERT
    same = rules.decide(candidate(0.5, polarity="positive"), [behavior(0.6)], 0.0, p)
    assert same.action == rules.REINFORCE and not same.drift_detected
    assert same.new_credibility == pytest.approx(1 - 0.4 * 0.5)
    stronger = rules.decide(candidate(0.8), [behavior(0.9)], 180 * DAY, p)
    assert stronger.action == rules.SUPERSEDE and stronger.drift_detected
    assert stronger.effective_credibility == pytest.approx(0.45)


def test_similarity_threshold_decides_conflict():
    p = Policy()
    near = np.array([0.6, 0.8, 0.0], np.float32)  # cosine 0.6 >= 0.55
    far = np.array([0.5, np.sqrt(0.75), 0.0], np.float32)  # cosine 0.5 < 0.55
    assert rules.decide(candidate(0.95, vector=near, target=""), [behavior()], 0, p).old
    assert rules.decide(candidate(0.95, vector=far, target=""), [behavior()], 0, p).old is None


def test_three_weak_signals_in_30_days_supersede_two_do_not():
    p = Policy()
    old = behavior(0.95)  # strong, last seen at day 0; ~0.6 effective at day 120
    for days, expect_superseded in (((120, 125, 140), True), ((120, 125, 155), False)):
        b = old
        for day in days:
            d = rules.decide(candidate(0.3), [b], day * DAY, p)
            assert d.effective_credibility > 0.3
            if d.action == rules.IGNORE:
                b = dataclasses.replace(b, signals=d.signals)
        assert (d.action == rules.SUPERSEDE) is expect_superseded, d.reason
        assert d.signal_count == (3 if expect_superseded else 2)
    assert d.drift_detected  # an ignored weak candidate is still a drift signal
    # The forced supersede carries the combined weak evidence.
    assert rules.decide(
        candidate(0.3),
        [
            behavior(
                0.95,
                signals=(
                    rules.Signal(120 * DAY, 0.3),
                    rules.Signal(125 * DAY, 0.3),
                ),
            )
        ],
        140 * DAY,
        p,
    ).new_credibility == pytest.approx(1 - 0.7**3)
