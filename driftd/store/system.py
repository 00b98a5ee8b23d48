"""Records of driftd's own Chroma collections (the ``driftd.sys.`` prefix):
routing messages and facts, behaviours, drift rules.

The capability adapters (:mod:`driftd.store.routing`, :mod:`driftd.store.behaviors`,
:mod:`driftd.store.monitor`) read and write these records on the store thread;
what a record's metadata means is the capability's business.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A Chroma metadata map: flat, scalar values.
Metadata = dict[str, Any]


@dataclass(frozen=True)
class StoredRecord:
    """One record of a system collection.

    ``embedding`` is (d,) float32, or None when not read (or not needed: Chroma
    requires one on write, so writers always give it).
    """

    id: str
    metadata: Metadata
    document: str = ""
    embedding: np.ndarray | None = field(default=None, compare=False)


def upsert(col: Any, records: Sequence[StoredRecord], max_batch: int) -> None:
    """Upserts ``records`` into the Chroma collection ``col`` in chunks of at most
    ``max_batch`` (Chroma rejects bigger batches). Store thread only."""
    for lo in range(0, len(records), max_batch):
        chunk = records[lo : lo + max_batch]
        col.upsert(
            ids=[r.id for r in chunk],
            embeddings=np.stack([np.asarray(r.embedding, dtype=np.float32) for r in chunk]),
            metadatas=[r.metadata for r in chunk],
            documents=[r.document for r in chunk],
        )


def records(got: Mapping[str, Any]) -> list[StoredRecord]:
    """The records of a Chroma ``get`` result (whatever it included)."""
    ids = got["ids"]
    metadatas = got.get("metadatas")
    documents = got.get("documents")
    embeddings = got.get("embeddings")
    return [
        StoredRecord(
            rid,
            dict(metadatas[j] or {}) if metadatas is not None else {},
            (documents[j] or "") if documents is not None else "",
            np.asarray(embeddings[j], dtype=np.float32) if embeddings is not None else None,
        )
        for j, rid in enumerate(ids)
    ]
