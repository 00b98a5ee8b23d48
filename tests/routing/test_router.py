"""The routing rule, text features and fact extraction, without a server: exact
behaviour on small hand-made vectors and texts."""

from __future__ import annotations

from time import time_ns

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftd.errors import InvalidArgument
from driftd.routing import llm
from driftd.routing.engine import merge_config, message_key
from driftd.routing.facts import SourceMessage, extract_facts
from driftd.routing.router import ConversationState, Router, RoutingConfig, unit
from driftd.routing.text import TopicCounter, content_words, open_question, return_cue, shift_cue

E = np.eye(8)  # orthogonal unit "topics"


def route(state, role, x, text, cfg=None):
    router = Router()
    cfg = cfg or state.config
    d = router.decide(state, cfg, role, unit(x), text)
    router.apply(state, cfg, d, unit(x), text, 0.0)
    return d


def test_first_message_branches_and_assistant_follows():
    s = ConversationState()
    d = route(s, "user", E[0], "book a flight to Paris")
    assert (d.action, d.drift_action, d.branch, d.is_new_branch) == (
        "BRANCH",
        "BRANCH_NEW_CLUSTER",
        0,
        True,
    )
    # Orthogonal to the branch, but an assistant reply stays with the user message.
    d = route(s, "assistant", E[5], "which airline do you prefer")
    assert (d.action, d.branch) == ("STAY", 0)


def test_branch_then_route_back_and_the_shared_word_weighs_in():
    s = ConversationState()
    route(s, "user", E[0], "book a flight to Paris")
    d = route(s, "user", E[1], "find a hotel room downtown")
    assert (d.action, d.branch, d.previous_branch, d.drift_action) == (
        "BRANCH",
        1,
        0,
        "BRANCH_NEW_CLUSTER",
    )
    cfg = s.config
    # Between the two branches, nearer the flight: its cosine alone falls short
    # of the route threshold, the shared word "flight" (branch 1 never used it)
    # carries it over.
    cos = cfg.route_threshold - cfg.anchor_weight / 2
    between = unit(cos * E[0] + np.sqrt(1 - cos**2) * E[2])
    assert Router().decide(s, cfg, "user", between, "reserve seats").action == "BRANCH"
    d = route(s, "user", between, "reserve seats on the flight")
    assert (d.action, d.branch, d.previous_branch) == ("ROUTE", 0, 1)
    assert "'flight'" in d.reason
    assert [b.count for b in s.branches] == [2, 1] and s.current == 0


def test_contentless_reply_stays_and_similar_message_stays():
    s = ConversationState()
    route(s, "user", E[0], "book a flight to Paris")
    assert route(s, "user", E[3], "Yes, okay, thanks!").action == "STAY"
    assert route(s, "user", E[0] + 0.2 * E[1], "a window seat on that flight").action == "STAY"


def test_config_changes_the_decision_and_is_kept():
    s = ConversationState()
    route(s, "user", E[0], "book a flight to Paris")
    strict = RoutingConfig(stay_threshold=1.0, short_message_boost=0.0, answer_boost=0.0)
    d = route(s, "user", E[0] + 0.5 * E[1], "flight seats", strict)
    assert d.action == "BRANCH" and s.config == strict


def test_recent_messages_are_compared_besides_the_centroid():
    cfg = RoutingConfig(recent_messages=1, short_message_boost=0.0, new_word_penalty=0.0)
    s = ConversationState(config=cfg)
    for x in (E[0], E[0], E[0], E[1]):
        route(s, "user", x, "trip planning details", cfg)
    branch = s.branches[s.current]
    assert branch.similarity(E[1], 1, None) == pytest.approx(1.0)
    assert branch.similarity(E[1], 0, None) == pytest.approx(branch.centroid_similarity(E[1], None))


def test_decisions_are_deterministic():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 16))
    texts = [f"topic{i % 5} detail{i}" for i in range(40)]

    def run():
        s = ConversationState()
        return [
            route(s, "user" if i % 2 == 0 else "assistant", x, t)
            for i, (x, t) in enumerate(zip(X, texts, strict=True))
        ]

    assert run() == run()


def test_text_features():
    assert content_words("Yes, that sounds great! Book 2 tickets to Berkeley.") == [
        "book",
        "tickets",
        "berkeley",
    ]
    assert shift_cue("Can you also find a hotel?") and not shift_cue("Find a hotel.")
    assert return_cue("Okay, back to the event.") and not return_cue("A new event.")
    assert open_question("Is there anything else I can help you with?")
    topic = TopicCounter()
    topic.add(["bus", "ticket", "bus", "city"])
    assert topic.topic(2) == "bus, ticket"


def test_rule_facts():
    msgs = [
        SourceMessage("m0", "user", "My name is Ana Lopez. I need 2 tickets from Phoenix."),
        SourceMessage("m1", "assistant", "The flight leaves at 6:15 am on March 2nd for $132."),
        SourceMessage("m2", "user", "Actually make it March 3rd. My email is ana@example.com"),
    ]
    facts = {(f.key, f.value): f for f in extract_facts(msgs)}
    assert facts[("name", "Ana Lopez")].confidence == pytest.approx(0.9)
    assert ("tickets", "2") in facts and ("origin", "Phoenix") in facts
    assert ("time", "6:15 am") in facts and ("amount", "$132") in facts
    assert facts[("email", "ana@example.com")].source_message_id == "m2"
    # The later date supersedes the earlier one.
    assert facts[("date", "March 3rd")].confidence > facts[("date", "March 2nd")].confidence


def test_llm_answer_parsing():
    msgs = [SourceMessage("m0", "user", "I live in Lyon and I'm vegetarian")]
    answer = '```json\n[{"key": "City", "value": "Lyon", "confidence": 1.5}, {"bad": 1}]\n```'
    assert llm.parse_facts(answer, msgs)[0].__dict__ == {
        "key": "city",
        "value": "Lyon",
        "confidence": 1.0,
        "source_message_id": "m0",
    }
    with pytest.raises(ValueError):
        llm.parse_facts('{"key": "x"}', msgs)
    assert llm.LLMConfig.from_env({}) is None
    cfg = llm.LLMConfig.from_env({"DRIFTD_FACTS_LLM_URL": "http://127.0.0.1:1/v1/"})
    assert (cfg.url, cfg.name) == ("http://127.0.0.1:1/v1", "llm:gpt-4o-mini")


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"stay_threshold": 1.5}, "config.stay_threshold", "LIMIT_EXCEEDED"),
        ({"recent_messages": 2.5}, "config.recent_messages", "INVALID_FIELD"),
        ({"assistant_follows_user": 1}, "config.assistant_follows_user", "INVALID_FIELD"),
        ({"nope": 1.0}, "config.nope", "INVALID_FIELD"),
    ],
)
def test_bad_config(changes, field, reason):
    with pytest.raises(InvalidArgument) as exc:
        merge_config(RoutingConfig(), changes)
    assert exc.value.reason == reason
    assert [v.field for v in exc.value.field_violations] == [field]


# --- two deciders for one conversation (issue 15) ----------------------------


def _interleaved(seed: int, n: int):
    """Two routers deciding for one conversation, each on its own stale state,
    their messages interleaved in storage order: (decision, vector) pairs."""
    rng = np.random.default_rng(seed)
    states = [ConversationState(), ConversationState()]
    stored = []
    for _ in range(n):
        x = unit(E[int(rng.integers(0, 4))] + rng.normal(0, 0.3, 8))
        stored.append((route(states[int(rng.integers(0, 2))], "user", x, "a b c"), x))
    return stored


@given(st.integers(0, 10_000), st.integers(1, 40))
def test_colliding_branch_numbers_replay_to_distinct_branches(seed, n):
    stored = _interleaved(seed, n)
    replayed = ConversationState()
    for d, x in stored:
        Router().apply(replayed, replayed.config, d, x, "a b c", 0.0)
    assert replayed.message_count == n
    assert [b.index for b in replayed.branches] == list(range(len(replayed.branches)))
    assert len(replayed.branches) == sum(d.is_new_branch for d, _ in stored)
    assert sum(b.count for b in replayed.branches) == n
    assert all(-1 <= b.parent < len(replayed.branches) for b in replayed.branches)


def test_message_keys_are_unique_and_ordered_after_a_later_clock():
    ahead = f"{time_ns() + 3_600_000_000_000:016x}" + "0" * 16  # another replica, 1 h ahead
    keys = [message_key()] + [message_key(ahead) for _ in range(1000)]
    assert len(set(keys)) == len(keys)
    assert keys[1:] == sorted(keys[1:])
    assert all(len(k) == 32 and k > ahead for k in keys[1:])
