"""The routing engine in-process over a real Chroma directory and the real
model: conversations dropped from memory (LRU) reload from Chroma to the same
state, and every message ends up in Chroma once the log is drained."""

from __future__ import annotations

import numpy as np

from driftd.config import Settings
from driftd.engine import AsyncDriftDB
from driftd.routing.engine import MESSAGES, RoutingEngine

TOPICS = {
    "pets": ["I want to adopt a puppy.", "Which breeds are calm with children?"],
    "taxes": ["How do I file my income taxes?", "Can I deduct my home office?"],
    "music": ["Recommend some jazz albums.", "Who played trumpet on Kind of Blue?"],
}


async def test_evicted_conversations_reload_to_the_same_state(tmp_path):
    db = await AsyncDriftDB.open(Settings(chroma_path=str(tmp_path), workers=1))
    engine = RoutingEngine(db, max_conversations=1)
    try:
        for text in TOPICS["pets"]:
            await engine.route("pets", role="user", content=text)
        live = await engine.list_branches("pets")
        live_totals = [b.total.copy() for b in engine._cache["pets"].state.branches]
        for topic in ("taxes", "music"):
            for text in TOPICS[topic]:
                await engine.route(topic, role="user", content=text)
        assert list(engine._cache) == ["music"]  # the others were dropped
        assert await engine.list_branches("pets") == live  # reloaded from Chroma
        reloaded = [b.total for b in engine._cache["pets"].state.branches]
        assert all(np.array_equal(a, b) for a, b in zip(live_totals, reloaded, strict=True))
        nxt = await engine.route("pets", role="user", content="Is a beagle a good first dog?")
        assert nxt.message_id == "m2"
    finally:
        await engine.aclose()
        stored = await db.on_store(lambda: db.chroma.get_collection(MESSAGES).count())
        await db.close()
    assert stored == 7
