"""MonitorService end to end: a real server process, real Chroma, generated stubs.

Drift between windows and embedding health on planted data, drift rules and
their alarms, the live event stream with several watchers while points stream
in, resuming, a slow watcher disconnected, and precise errors for bad input.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2, struct_pb2
from support import ServerProcess, error_details

from driftd import convert
from driftd.v1 import (
    collection_pb2,
    collection_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    point_pb2,
    point_pb2_grpc,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stubs(channel):
    return (
        collection_pb2_grpc.CollectionServiceStub(channel),
        point_pb2_grpc.PointServiceStub(channel),
        monitor_pb2_grpc.MonitorServiceStub(channel),
    )


def create(stubs, name, dim, distance=collection_pb2.DISTANCE_L2):
    stubs[0].CreateCollection(
        collection_pb2.CreateCollectionRequest(
            collection_id=name,
            collection=collection_pb2.Collection(dimension=dim, distance=distance),
        )
    )
    return f"collections/{name}"


def points(vectors, start=T0, step=HOUR, prefix="p", series="", payloads=None):
    out = []
    for i, v in enumerate(vectors):
        p = point_pb2.Point(id=f"{prefix}{i}", vector=np.asarray(v).tolist(), series=series)
        p.time.CopyFrom(convert.datetime_to_timestamp(start + i * step))
        if payloads is not None:
            s = struct_pb2.Struct()
            s.update(payloads[i])
            p.payload.CopyFrom(s)
        out.append(p)
    return out


def upsert(stubs, parent, pts, batch=500):
    for lo in range(0, len(pts), batch):
        stubs[1].UpsertPoints(
            point_pb2.UpsertPointsRequest(parent=parent, points=pts[lo : lo + batch])
        )


def window(start=None, end=None, series=""):
    return monitor_pb2.Window(time_range=convert.bounds_to_time_range(start, end), series=series)


def rejected(call, code, reason):
    with pytest.raises(grpc.RpcError) as exc:
        call()
    got = error_details(exc.value)
    assert got[:2] == (code, reason), exc.value.details()
    return got


@pytest.fixture(scope="module")
def planted(stubs):
    """300 hours of 32-d Gaussian points; from hour 200 the mean moves by 1 σ in 4 dims."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 32))
    X[200:, :4] += 1.0
    parent = create(stubs, "mon-planted", 32)
    upsert(stubs, parent, points(X))
    return parent


def test_compare_windows_finds_the_planted_shift_and_not_noise(stubs, planted):
    compare = stubs[2].CompareWindows
    same = compare(
        monitor_pb2.CompareWindowsRequest(
            parent=planted,
            window_a=window(T0, T0 + 100 * HOUR),
            window_b=window(T0 + 100 * HOUR, T0 + 200 * HOUR),
            seed=1,
        )
    )
    r = same.report
    assert r.verdict == monitor_pb2.DRIFT_VERDICT_NO_DRIFT and r.mmd.p_value > 0.01
    assert (r.window_a_count, r.window_b_count, r.window_a_used) == (100, 100, 100)
    assert len(r.ks.components) == r.reduced_dimension > 0
    assert r.thresholds.alpha == 0.01 and r.mmd.permutations == 500
    assert same.collection_version >= 1
    shifted = compare(
        monitor_pb2.CompareWindowsRequest(
            parent=planted,
            window_a=window(T0 + 100 * HOUR, T0 + 200 * HOUR),
            window_b=window(T0 + 200 * HOUR),
            permutations=200,
            alpha=0.05,
            seed=1,
        )
    ).report
    assert shifted.verdict in (monitor_pb2.DRIFT_VERDICT_DRIFT, monitor_pb2.DRIFT_VERDICT_SEVERE)
    assert shifted.mmd.p_value <= 0.05 and shifted.domain_classifier.roc_auc > 0.7
    assert shifted.ks.rejected_count >= 1 and shifted.centroid_shift.euclidean_distance > 1
    again = compare(
        monitor_pb2.CompareWindowsRequest(
            parent=planted,
            window_a=window(T0 + 100 * HOUR, T0 + 200 * HOUR),
            window_b=window(T0 + 200 * HOUR),
            permutations=200,
            alpha=0.05,
            seed=1,
        )
    ).report
    assert again == shifted  # deterministic under the seed


def test_embedding_health(stubs):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 16))
    X[:5] = X[:5] / np.linalg.norm(X[:5], axis=1, keepdims=True)  # only these are unit length
    X[7] *= 40.0
    X[9] = X[8]
    parent = create(stubs, "mon-health", 16, collection_pb2.DISTANCE_COSINE)
    models = [{"embed_model": "model-a" if i % 2 else "model-b"} for i in range(200)]
    upsert(stubs, parent, points(X, payloads=models))
    h = stubs[2].EmbeddingHealth(monitor_pb2.EmbeddingHealthRequest(parent=parent))
    assert h.point_count == h.sampled_count == 200
    assert h.norms.non_normalized_count == 195 and h.norms.max > 30
    assert h.near_duplicate_rate == pytest.approx(2 / 200)
    assert h.model_mixing.suspected and list(h.model_mixing.payload_models) == [
        "model-a",
        "model-b",
    ]
    assert any("not unit length" in w for w in h.warnings)
    assert 1 < h.rank.effective_rank <= 16 and not h.rank.collapsed
    plain = create(stubs, "mon-health-l2", 16)
    X = rng.standard_normal((200, 16))
    X[3] += 12.0
    upsert(stubs, plain, points(X))
    h = stubs[2].EmbeddingHealth(
        monitor_pb2.EmbeddingHealthRequest(parent=plain, max_outliers=1, window=window(T0))
    )
    assert [o.id for o in h.outliers] == ["p3"] and h.outlier_count >= 1
    assert h.norms.non_normalized_count == 0


def test_bad_input_gets_precise_statuses_and_writes_nothing(stubs, planted):
    m = stubs[2]
    cw = monitor_pb2.CompareWindowsRequest
    a, b = window(T0, T0 + 100 * HOUR), window(T0 + 100 * HOUR)
    rejected(
        lambda: m.CompareWindows(cw(parent="nope", window_a=a, window_b=b)), INVALID, "INVALID_NAME"
    )
    _, _, _, fields = rejected(
        lambda: m.CompareWindows(cw(parent=planted, window_a=window(T0 + HOUR, T0), window_b=b)),
        INVALID,
        "INVALID_FIELD",
    )
    assert fields == ["window_a.time_range"]
    _, _, meta, fields = rejected(
        lambda: m.CompareWindows(cw(parent=planted, window_a=a, window_b=b, permutations=5)),
        INVALID,
        "LIMIT_EXCEEDED",
    )
    assert fields == ["permutations"] and meta["limit"] == "10000"
    rejected(
        lambda: m.CompareWindows(cw(parent=planted, window_a=a, window_b=b, alpha=0.9)),
        INVALID,
        "LIMIT_EXCEEDED",
    )
    _, _, meta, _ = rejected(
        lambda: m.CompareWindows(cw(parent=planted, window_a=a, window_b=window(series="x"))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_ENOUGH_POINTS",
    )
    assert meta == {"window": "window_b", "required": "10", "available": "0"}
    rejected(
        lambda: m.CompareWindows(cw(parent="collections/mon-absent", window_a=a, window_b=b)),
        grpc.StatusCode.NOT_FOUND,
        "COLLECTION_NOT_FOUND",
    )
    rejected(
        lambda: m.EmbeddingHealth(
            monitor_pb2.EmbeddingHealthRequest(parent=planted, max_outliers=2000)
        ),
        INVALID,
        "LIMIT_EXCEEDED",
    )
    create_rule = monitor_pb2.CreateDriftRuleRequest
    day = duration_pb2.Duration(seconds=86_400)
    _, _, _, fields = rejected(
        lambda: m.CreateDriftRule(create_rule(parent=planted, drift_rule=monitor_pb2.DriftRule())),
        INVALID,
        "INVALID_FIELD",
    )
    assert fields == ["drift_rule.window"]
    rejected(
        lambda: m.CreateDriftRule(
            create_rule(parent=planted, drift_rule_id="Bad_Id", drift_rule={"window": day})
        ),
        INVALID,
        "INVALID_NAME",
    )
    rejected(
        lambda: m.CreateDriftRule(
            create_rule(parent=planted, drift_rule={"window": day, "p_value_threshold": 0.7})
        ),
        INVALID,
        "LIMIT_EXCEEDED",
    )
    listed = m.ListDriftRules(monitor_pb2.ListDriftRulesRequest(parent=planted))
    assert list(listed.drift_rules) == []  # nothing was written
    rejected(
        lambda: m.GetDriftRule(
            monitor_pb2.GetDriftRuleRequest(name=f"{planted}/driftRules/absent")
        ),
        grpc.StatusCode.NOT_FOUND,
        "DRIFT_RULE_NOT_FOUND",
    )
    rejected(
        lambda: m.GetDriftRule(monitor_pb2.GetDriftRuleRequest(name="collections/x")),
        INVALID,
        "INVALID_NAME",
    )
    watch = monitor_pb2.WatchCollectionRequest
    _, _, meta, _ = rejected(
        lambda: next(m.WatchCollection(watch(parent=planted, after_sequence=5))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "EVENTS_EXPIRED",
    )
    assert meta["after_sequence"] == "5"
    rejected(
        lambda: next(m.WatchCollection(watch(parent=planted, event_types=[99]))),
        INVALID,
        "INVALID_FIELD",
    )


class Watch:
    """A WatchCollection stream read on a thread into ``events``."""

    def __init__(self, stub, request, **kwargs):
        self.call = stub.WatchCollection(request, **kwargs)
        self.events: list[monitor_pb2.WatchCollectionResponse] = []
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for event in self.call:
                self.events.append(event)
        except grpc.RpcError as err:
            self.error = err

    def wait_for(self, predicate, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.events):
                return self.events
            time.sleep(0.05)
        raise AssertionError(f"timed out; got {[e.WhichOneof('event') for e in self.events]}")

    def close(self):
        self.call.cancel()
        self.thread.join(10)


def kinds(events, kind):
    return [e for e in events if e.WhichOneof("event") == kind]


def test_watchers_see_upserts_deletes_and_chapters_while_points_stream_in(stubs):
    rng = np.random.default_rng(2)
    means = rng.standard_normal((2, 64)) * 1.5
    X = np.vstack(
        [means[0] + rng.standard_normal((150, 64)), means[1] + rng.standard_normal((150, 64))]
    )
    parent = create(stubs, "mon-live", 64)
    watchers = [
        Watch(stubs[2], monitor_pb2.WatchCollectionRequest(parent=parent)) for _ in range(3)
    ]
    time.sleep(0.5)  # let the watches register before the first write

    def requests():
        pts = points(X, series="agent")
        for k, lo in enumerate(range(0, 300, 30)):
            yield point_pb2.StreamUpsertPointsRequest(
                parent=parent, sequence=k, points=pts[lo : lo + 30]
            )

    acks = list(stubs[1].StreamUpsertPoints(requests()))
    assert len(acks) == 10
    stubs[1].DeletePoints(point_pb2.DeletePointsRequest(parent=parent, ids=["p0", "p1"]))
    for w in watchers:
        w.wait_for(lambda ev: kinds(ev, "points_deleted") and kinds(ev, "chapter_detected"))
    seqs = [[e.sequence for e in w.events] for w in watchers]
    assert seqs[0] == seqs[1] == seqs[2]
    assert all(b > a for a, b in zip(seqs[0], seqs[0][1:], strict=False))
    ups = kinds(watchers[0].events, "points_upserted")
    assert [i for e in ups for i in e.points_upserted.point_ids] == [f"p{i}" for i in range(300)]
    assert list(ups[0].points_upserted.series) == ["agent"]
    assert [e.collection_version for e in ups] == sorted(e.collection_version for e in ups)
    chapters = kinds(watchers[0].events, "chapter_detected")
    first = chapters[0].chapter_detected
    assert first.series == "agent" and abs(int(first.start_point_id[1:]) - 150) <= 5
    assert first.delay_points >= 0 and 0 < first.probability <= 1
    assert list(kinds(watchers[0].events, "points_deleted")[0].points_deleted.point_ids) == [
        "p0",
        "p1",
    ]

    # Resume after the first event: the rest arrives again, in order.
    resumed = Watch(
        stubs[2], monitor_pb2.WatchCollectionRequest(parent=parent, after_sequence=seqs[0][0])
    )
    resumed.wait_for(lambda ev: len(ev) >= len(seqs[0]) - 1)
    assert [e.sequence for e in resumed.events][: len(seqs[0]) - 1] == seqs[0][1:]
    only = Watch(
        stubs[2],
        monitor_pb2.WatchCollectionRequest(
            parent=parent,
            after_sequence=seqs[0][0],
            event_types=[monitor_pb2.EVENT_TYPE_POINTS_DELETED],
        ),
    )
    only.wait_for(lambda ev: len(ev) >= 1)
    assert [e.WhichOneof("event") for e in only.events] == ["points_deleted"]
    for w in (*watchers, resumed, only):
        w.close()


def test_drift_rule_raises_an_alarm_when_a_window_differs(stubs):
    rng = np.random.default_rng(3)
    parent = create(stubs, "mon-rule", 16)
    m = stubs[2]
    rule = m.CreateDriftRule(
        monitor_pb2.CreateDriftRuleRequest(
            parent=parent,
            drift_rule_id="daily",
            drift_rule=monitor_pb2.DriftRule(window=duration_pb2.Duration(seconds=86_400)),
        )
    )
    assert rule.name == f"{parent}/driftRules/daily" and rule.p_value_threshold == 0.01
    assert rule.min_points == 20 and not rule.HasField("last_evaluation")
    rejected(
        lambda: m.CreateDriftRule(
            monitor_pb2.CreateDriftRuleRequest(
                parent=parent, drift_rule_id="daily", drift_rule={"window": {"seconds": 60}}
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "DRIFT_RULE_ALREADY_EXISTS",
    )
    alarms = Watch(
        m,
        monitor_pb2.WatchCollectionRequest(
            parent=parent, event_types=[monitor_pb2.EVENT_TYPE_DRIFT_ALARM]
        ),
    )
    time.sleep(0.5)
    step = timedelta(minutes=12)  # 120 points a day
    day0, day1 = rng.standard_normal((120, 16)), rng.standard_normal((120, 16))
    day2 = rng.standard_normal((120, 16))
    day2[:, :3] += 1.5
    for d, X in enumerate((day0, day1, day2)):
        upsert(stubs, parent, points(X, start=T0 + timedelta(days=d), step=step, prefix=f"d{d}-"))
    # Entering day 3 compares day 1 with day 2.
    upsert(
        stubs,
        parent,
        points(rng.standard_normal((1, 16)), start=T0 + timedelta(days=3), prefix="d3-"),
    )
    events = alarms.wait_for(lambda ev: len(ev) >= 1)
    alarm = events[0].drift_alarm
    assert alarm.drift_rule == rule.name
    assert convert.timestamp_to_datetime(alarm.window_b.start_time) == T0 + timedelta(days=2)
    assert alarm.report.mmd.p_value <= 0.01 and alarm.report.window_b_count == 120
    assert len(events) == 1  # day 0 vs day 1 (on entering day 2) raised nothing
    got = m.GetDriftRule(monitor_pb2.GetDriftRuleRequest(name=rule.name))
    assert (
        got.alarm_count == 1 and got.last_evaluation.verdict != monitor_pb2.DRIFT_VERDICT_NO_DRIFT
    )
    listed = m.ListDriftRules(monitor_pb2.ListDriftRulesRequest(parent=parent))
    assert [r.name for r in listed.drift_rules] == [rule.name]
    m.DeleteDriftRule(monitor_pb2.DeleteDriftRuleRequest(name=rule.name))
    assert not m.ListDriftRules(monitor_pb2.ListDriftRulesRequest(parent=parent)).drift_rules
    alarms.close()


def test_a_watcher_that_falls_behind_is_disconnected(server, stubs):
    parent = create(stubs, "mon-slow", 2)
    # Small HTTP/2 windows on this channel, so the server's writes block as soon
    # as the client stops reading instead of after megabytes of buffering.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16_384)]
    with grpc.insecure_channel(server.target, options=options) as ch:
        call = monitor_pb2_grpc.MonitorServiceStub(ch).WatchCollection(
            monitor_pb2.WatchCollectionRequest(parent=parent)
        )
        first = []
        reader = threading.Thread(target=lambda: first.append(next(call)))
        reader.start()
        time.sleep(0.5)
        rng = np.random.default_rng(4)
        # 12 batches of 5,000 ids overflow the 50,000 point ids the server buffers.
        for k in range(12):
            upsert(stubs, parent, points(rng.standard_normal((5000, 2)), prefix=f"b{k}-"), 5000)
        reader.join(30)
        with pytest.raises(grpc.RpcError) as exc:
            for _ in call:
                pass
    code, reason, meta, _ = error_details(exc.value)
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCHER_TOO_SLOW")
    assert "resume" in exc.value.details() and meta["max_queued_points"] == "50000"


def test_drift_rules_survive_a_restart(tmp_path):
    srv = ServerProcess(tmp_path / "chroma", tmp_path / "server.log").start()
    try:
        with grpc.insecure_channel(srv.target) as ch:
            stubs = (
                collection_pb2_grpc.CollectionServiceStub(ch),
                point_pb2_grpc.PointServiceStub(ch),
                monitor_pb2_grpc.MonitorServiceStub(ch),
            )
            parent = create(stubs, "mon-restart", 4)
            rule = stubs[2].CreateDriftRule(
                monitor_pb2.CreateDriftRuleRequest(
                    parent=parent, drift_rule={"window": {"seconds": 3600}, "series": "s"}
                )
            )
        srv.stop()
        srv.start()
        with grpc.insecure_channel(srv.target) as ch:
            got = monitor_pb2_grpc.MonitorServiceStub(ch).GetDriftRule(
                monitor_pb2.GetDriftRuleRequest(name=rule.name)
            )
        assert got == rule
    finally:
        srv.stop()


def test_deleting_a_collection_ends_its_watches_and_deletes_its_drift_rules(tmp_path):
    """A deleted collection's watches end with NOT_FOUND and its drift rules go,
    from the monitor and from Chroma: a collection created again under the same
    name starts with no rules, and a watch cannot resume into it."""
    srv = ServerProcess(tmp_path / "chroma", tmp_path / "server.log").start()
    try:
        with grpc.insecure_channel(srv.target) as ch:
            stubs = (
                collection_pb2_grpc.CollectionServiceStub(ch),
                point_pb2_grpc.PointServiceStub(ch),
                monitor_pb2_grpc.MonitorServiceStub(ch),
            )
            m, rng = stubs[2], np.random.default_rng(5)
            parent = create(stubs, "mon-drop", 4)
            old = m.CreateDriftRule(
                monitor_pb2.CreateDriftRuleRequest(
                    parent=parent, drift_rule_id="hourly", drift_rule={"window": {"seconds": 3600}}
                )
            )
            watch = Watch(m, monitor_pb2.WatchCollectionRequest(parent=parent))
            time.sleep(0.5)  # let the watch register before the writes
            for k in range(2):
                upsert(stubs, parent, points(rng.standard_normal((20, 4)), prefix=f"b{k}-"))
            first = watch.wait_for(lambda ev: len(kinds(ev, "points_upserted")) == 2)[0]

            stubs[0].DeleteCollection(collection_pb2.DeleteCollectionRequest(name=parent))
            watch.thread.join(10)
            assert not watch.thread.is_alive(), "the watch outlived its collection"
            code, reason, _, _ = error_details(watch.error)
            assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "COLLECTION_NOT_FOUND")
            assert "deleted" in watch.error.details()
            rejected(
                lambda: m.GetDriftRule(monitor_pb2.GetDriftRuleRequest(name=old.name)),
                grpc.StatusCode.NOT_FOUND,
                "COLLECTION_NOT_FOUND",
            )

            assert create(stubs, "mon-drop", 4) == parent
            listed = m.ListDriftRules(monitor_pb2.ListDriftRulesRequest(parent=parent))
            assert not listed.drift_rules
            rejected(
                lambda: m.GetDriftRule(monitor_pb2.GetDriftRuleRequest(name=old.name)),
                grpc.StatusCode.NOT_FOUND,
                "DRIFT_RULE_NOT_FOUND",
            )
            # Resuming the old watch: the events it missed were the old collection's.
            rejected(
                lambda: next(
                    m.WatchCollection(
                        monitor_pb2.WatchCollectionRequest(
                            parent=parent, after_sequence=first.sequence
                        )
                    )
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "EVENTS_EXPIRED",
            )
            new = m.CreateDriftRule(
                monitor_pb2.CreateDriftRuleRequest(
                    parent=parent, drift_rule_id="hourly", drift_rule={"window": {"seconds": 7200}}
                )
            )
            assert new.name == old.name and new.window.seconds == 7200
        srv.stop()

        # In Chroma itself only the new collection's rule is left.
        import chromadb

        client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
        stored = client.get_collection("driftd.sys.monitor.drift_rules").get(include=["metadatas"])
        uid = str(client.get_collection("mon-drop").id)
        assert [(md["rule_id"], md["collection_uid"]) for md in stored["metadatas"]] == [
            ("hourly", uid)
        ]
        assert stored["metadatas"][0]["window_seconds"] == 7200
    finally:
        srv.stop()
