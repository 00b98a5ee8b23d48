"""The routing engine in-process over a real Chroma directory and the real
model: conversations dropped from memory (LRU) reload from Chroma to the same
state, and every message ends up in Chroma once the log is drained."""

from __future__ import annotations

import numpy as np

from driftd.config import Settings
from driftd.routing.engine import RoutingEngine
from driftd.store.routing import ChromaRoutingRepository
from driftd.store.runner import StoreRunner

TOPICS = {
    "pets": ["I want to adopt a puppy.", "Which breeds are calm with children?"],
    "taxes": ["How do I file my income taxes?", "Can I deduct my home office?"],
    "music": ["Recommend some jazz albums.", "Who played trumpet on Kind of Blue?"],
}


async def test_evicted_conversations_reload_to_the_same_state(tmp_path):
    settings = Settings(chroma_path=str(tmp_path), workers=1)
    store = await StoreRunner.open(path=settings.chroma_path)
    repo = ChromaRoutingRepository(store)
    engine = RoutingEngine(settings, repo, max_conversations=1)
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
        stored = [len(await repo.messages(c, embeddings=False)) for c in TOPICS]
        await store.aclose()
    assert stored == [3, 2, 2]
