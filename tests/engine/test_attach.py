"""AttachCollection adopts every collection plain chromadb can make (issue 13,
defect 10): all three spaces, set through the older ``metadata={"hnsw:space": ...}``
or through ``configuration``; and writes made afterwards by another Chroma client
(a real second chromadb client on the same directory) are seen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import chromadb
import numpy as np
import pytest

from driftd.config import Settings
from driftd.engine import AsyncDriftDB

T0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
DIM = 6


def _records(lo: int, hi: int) -> dict:
    rng = np.random.default_rng(lo)
    return {
        "ids": [f"r{i}" for i in range(lo, hi)],
        "embeddings": rng.normal(size=(hi - lo, DIM)).astype(np.float32),
        "metadatas": [{"t": T0 + 60.0 * i, "who": "owner"} for i in range(lo, hi)],
        "documents": [f"record {i}" for i in range(lo, hi)],
    }


@pytest.fixture
async def engine(tmp_path):
    db = await AsyncDriftDB.open(Settings(chroma_path=str(tmp_path / "chroma"), workers=1))
    yield db, chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    await db.close()


STYLES = [
    ("metadata", "cosine"),
    ("metadata", "l2"),
    ("metadata", "ip"),
    ("configuration", "cosine"),
    ("configuration", "l2"),
    ("configuration", "ip"),
    ("default", "l2"),
]


@pytest.mark.parametrize("style, space", STYLES)
async def test_attach_any_chroma_collection(engine, style, space):
    db, owner = engine
    kwargs = {
        "metadata": {"metadata": {"hnsw:space": space, "team": "search"}},
        "configuration": {
            "configuration": {"hnsw": {"space": space}},
            "metadata": {"team": "search"},
        },
        "default": {"metadata": {"team": "search"}},
    }[style]
    col = owner.create_collection(f"owned-{style}-{space}", embedding_function=None, **kwargs)
    col.add(**_records(0, 40))

    info = await db.attach_collection(col.name, time_key="t")
    assert (info.distance, info.dimension, info.point_count) == (space, DIM, 40)

    # driftd's own writes keep the owner's metadata and the collection's space.
    await db.upsert(
        col.name,
        [{"id": "mine", "timestamp": datetime.fromtimestamp(T0 + 1e5, UTC), "vector": [1.0] * DIM}],
    )
    again = owner.get_collection(col.name, embedding_function=None)
    assert again.metadata["team"] == "search"
    assert again.configuration_json["hnsw"]["space"] == space
    assert (await db.get_collection(col.name)).point_count == 41


async def test_writes_by_another_chroma_client_are_seen(engine):
    db, owner = engine
    col = owner.create_collection(
        "owned-live", metadata={"hnsw:space": "cosine"}, embedding_function=None
    )
    col.add(**_records(0, 30))
    await db.attach_collection(col.name, time_key="t")
    assert (await db.get_collection(col.name)).point_count == 30

    col.add(**_records(30, 50))  # the owner keeps writing through its own client
    info = await db.get_collection(col.name)
    assert info.point_count == 50
    assert info.end_time == datetime.fromtimestamp(T0 + 60.0 * 49, UTC)
    chunks = [
        c
        async for c in db.trajectory(
            col.name, start=datetime.fromtimestamp(T0, UTC) + timedelta(minutes=45)
        )
    ]
    assert [p.id for c in chunks for p in c] == ["r45", "r46", "r47", "r48", "r49"]

    col.delete(ids=["r0", "r1"])
    assert (await db.get_collection(col.name)).point_count == 48
