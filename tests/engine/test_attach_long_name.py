"""Chroma allows collection names of up to 512 characters; driftd attaches them
(issue 13, defect 12: ids were limited to 63)."""

from __future__ import annotations

import chromadb

from driftd import DriftDB


def test_attach_a_collection_with_a_512_character_name(tmp_path):
    name = "legacy-" + "x" * 505
    assert len(name) == 512
    raw = chromadb.PersistentClient(path=str(tmp_path))
    col = raw.create_collection(name, embedding_function=None)
    col.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]], metadatas=[{"t": 1.0}, {"t": 2.0}])
    with DriftDB(str(tmp_path), workers=1) as db:
        info = db.attach_collection(name, time_key="t")
        assert (info.name, info.point_count, info.attached) == (name, 2, True)
        assert [p.id for p in db.trajectory(name)] == ["a", "b"]
