"""Pool work is bounded before any is done (issue 13, defect 2): FindAttractors
seeds x bootstrap refits and the points of an offline chapter search, in-process
over a real Chroma directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from driftd.config import Settings
from driftd.engine import AsyncDriftDB
from driftd.errors import InvalidArgument

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
async def db(tmp_path):
    settings = Settings(
        chroma_path=str(tmp_path / "chroma"),
        workers=1,
        max_attractor_work=100,
        max_chapter_points=50,
    )
    engine = await AsyncDriftDB.open(settings)
    await engine.create_collection("walk", dim=4, distance="l2")
    steps = np.random.default_rng(0).normal(size=(80, 4)).cumsum(0)
    await engine.upsert(
        "walk",
        [
            {"id": f"w{i}", "timestamp": T0 + timedelta(minutes=i), "vector": steps[i]}
            for i in range(80)
        ],
    )
    yield engine
    await engine.close()


async def test_attractor_work_is_seeds_times_refits(db):
    with pytest.raises(InvalidArgument) as err:
        await db.flow_attractors("walk", seeds=64, bootstrap=2)  # 128 > 100
    assert err.value.reason == "LIMIT_EXCEEDED"
    assert err.value.metadata == {"limit": "100", "work": "128"}
    assert [v.field for v in err.value.field_violations] == ["seeds"]
    found = await db.flow_attractors("walk", seeds=50, bootstrap=2)
    assert found.bootstrap == 2


async def test_chapter_search_is_bounded_by_the_selection(db):
    with pytest.raises(InvalidArgument) as err:
        await db.flow_chapters("walk")  # 80 points > 50
    assert err.value.reason == "LIMIT_EXCEEDED"
    assert err.value.metadata == {"limit": "50", "selected": "80"}
    found = await db.flow_chapters("walk", start=T0 + timedelta(minutes=40))
    assert sum(c.point_count for c in found.chapters) == 40
