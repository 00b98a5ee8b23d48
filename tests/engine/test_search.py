"""SearchPoints' engine path against what it must equal: Chroma's own filtered
query (no time window: one HNSW query with the payload filter as ``where``), and
an exact nearest-neighbour computation over the points the filters select (time
window / series, with or without a payload filter). Real embedded Chroma."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import chromadb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftd import DriftDB

T0 = datetime(2024, 1, 1, tzinfo=UTC)
N, D = 1500, 24
TAGS = ("a", "b", "c")


def _data(distance: str):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((N, D)).astype(np.float32)
    return X, {
        "series": [f"s{i % 4}" for i in range(N)],
        "tag": [TAGS[i % 3] for i in range(N)],
        "rank": [int(i % 5) for i in range(N)],
        "time": [T0 + timedelta(minutes=i) for i in range(N)],
        "distance": distance,
    }


@pytest.fixture(scope="module", params=["cosine", "l2", "ip"])
def filled(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("search")
    X, cols = _data(request.param)
    name = f"search-{request.param}"
    with DriftDB(str(path), workers=1) as db:
        db.create_collection(name, dim=D, distance=request.param)
        db.upsert(
            name,
            [
                {
                    "id": f"p{i}",
                    "timestamp": cols["time"][i],
                    "vector": X[i],
                    "series": cols["series"][i],
                    "text": f"point {i}",
                    "payload": {"tag": cols["tag"][i], "rank": cols["rank"][i]},
                }
                for i in range(N)
            ],
        )
        yield db, name, X, cols, path


def _exact(X, cols, selected: np.ndarray, q: np.ndarray, k: int) -> list[str]:
    """Brute-force k nearest ids among ``selected`` in Chroma's distance."""
    d = _dist(X[selected], q, cols)
    return [f"p{selected[j]}" for j in np.argsort(d, kind="stable")[:k]]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    lo=st.integers(0, N - 1),
    width=st.integers(1, N),
    series=st.sampled_from(["", "s1", "s3", "unknown"]),
    tag=st.sampled_from([None, "a", "c", "absent"]),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_windowed_search_is_exact_over_the_selection(filled, lo, width, series, tag, k, seed):
    db, name, X, cols, _ = filled
    q = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    start, end = cols["time"][lo], cols["time"][lo] + timedelta(minutes=width)
    hits = db.search(
        name,
        vector=q,
        top_k=k,
        start=start,
        end=end,
        series=series,
        payload_filter={"tag": tag} if tag else None,
    )
    selected = np.array(
        [
            i
            for i in range(N)
            if start <= cols["time"][i] < end
            and (not series or cols["series"][i] == series)
            and (tag is None or cols["tag"][i] == tag)
        ],
        dtype=np.int64,
    )
    want = _exact(X, cols, selected, q, k) if len(selected) else []
    got = [h.point.id for h in hits]
    # Distances are float32 sums: equal up to rounding, so compare sets of the
    # clearly-ranked ones and the distances themselves.
    assert len(got) == len(want)
    if got:
        Xg = X[[int(i[1:]) for i in got]].astype(np.float64)
        Xw = X[[int(i[1:]) for i in want]].astype(np.float64)
        assert np.allclose(
            sorted(_dist(Xg, q, cols)), sorted(_dist(Xw, q, cols)), rtol=1e-4, atol=1e-5
        )
    for h in hits:
        i = int(h.point.id[1:])
        assert np.isclose(h.distance, _dist(X[i : i + 1], q, cols)[0], rtol=1e-4, atol=1e-5)
        assert start <= h.point.time < end
        assert h.point.payload == {"tag": cols["tag"][i], "rank": cols["rank"][i]}
        assert h.point.series == cols["series"][i] and h.point.text == f"point {i}"


def _dist(Y, q, cols) -> np.ndarray:
    Y, q = Y.astype(np.float64), q.astype(np.float64)
    if cols["distance"] == "cosine":
        return 1 - Y @ q / (np.linalg.norm(Y, axis=1) * np.linalg.norm(q))
    if cols["distance"] == "ip":
        return 1 - Y @ q
    return ((Y - q) ** 2).sum(1)


@pytest.mark.parametrize(
    "payload_filter, where",
    [
        (None, None),
        ({"tag": "b"}, {"tag": {"$eq": "b"}}),
        ({"tag": "a", "rank": 2}, {"$and": [{"tag": {"$eq": "a"}}, {"rank": {"$eq": 2}}]}),
    ],
)
def test_unwindowed_search_equals_chromas_filtered_query(filled, payload_filter, where):
    db, name, X, cols, path = filled
    chroma = chromadb.PersistentClient(path=str(path)).get_collection(name, embedding_function=None)
    rng = np.random.default_rng(3)
    for q in rng.standard_normal((10, D)).astype(np.float32):
        hits = db.search(
            name, vector=q, top_k=15, payload_filter=payload_filter, include_vectors=True
        )
        raw = chroma.query(query_embeddings=[q], n_results=15, where=where, include=["distances"])
        assert [h.point.id for h in hits] == raw["ids"][0]
        assert np.allclose([h.distance for h in hits], raw["distances"][0], rtol=1e-6)
        for h in hits:
            i = int(h.point.id[1:])
            np.testing.assert_allclose(h.point.vector, X[i], rtol=1e-5, atol=1e-6)
            assert h.point.time == cols["time"][i]
            assert h.point.payload == {"tag": cols["tag"][i], "rank": cols["rank"][i]}


def test_search_skips_points_deleted_after_the_window_was_taken(filled):
    """A deleted point is never returned, and a point written since is found."""
    db, name, X, cols, _ = filled
    q = X[10] + 1e-3
    first = db.search(name, vector=q, top_k=1, end=cols["time"][-1])[0].point.id
    assert first == "p10"
    db.delete_points(name, ["p10"])
    try:
        again = db.search(name, vector=q, top_k=3, end=cols["time"][-1])
        assert "p10" not in [h.point.id for h in again]
    finally:
        db.upsert(
            name,
            [
                {
                    "id": "p10",
                    "timestamp": cols["time"][10],
                    "vector": X[10],
                    "series": cols["series"][10],
                    "text": "point 10",
                    "payload": {"tag": cols["tag"][10], "rank": cols["rank"][10]},
                }
            ],
        )
    assert db.search(name, vector=q, top_k=1, end=cols["time"][-1])[0].point.id == "p10"
