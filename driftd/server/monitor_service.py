"""MonitorService: drift between windows, embedding health, drift rules, live events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import empty_pb2, timestamp_pb2

from driftd import convert
from driftd.engine import parse_collection_name
from driftd.errors import FieldViolation, InvalidArgument
from driftd.monitor import drift, events
from driftd.monitor.monitor import DriftRule, Monitor, Window, parse_rule_name
from driftd.server.status import maps_errors
from driftd.v1 import monitor_pb2, monitor_pb2_grpc, point_pb2

# What the proto's "0 means default" fields mean.
DEFAULT_PERMUTATIONS = 500
DEFAULT_ALPHA = 0.01
DEFAULT_MAX_POINTS_PER_WINDOW = 2000
DEFAULT_MAX_OUTLIERS = 10
DEFAULT_DUPLICATE_SIMILARITY = 0.98
DEFAULT_HEALTH_MAX_POINTS = 5000
DEFAULT_P_VALUE_THRESHOLD = 0.01
DEFAULT_MIN_POINTS = 20
DEFAULT_PAGE_SIZE = 100

VERDICT_TO_PROTO = {
    "no_drift": monitor_pb2.DRIFT_VERDICT_NO_DRIFT,
    "drift": monitor_pb2.DRIFT_VERDICT_DRIFT,
    "severe": monitor_pb2.DRIFT_VERDICT_SEVERE,
}
EVENT_TYPE_FROM_PROTO = {
    monitor_pb2.EVENT_TYPE_POINTS_UPSERTED: events.POINTS_UPSERTED,
    monitor_pb2.EVENT_TYPE_POINTS_DELETED: events.POINTS_DELETED,
    monitor_pb2.EVENT_TYPE_CHAPTER_DETECTED: events.CHAPTER_DETECTED,
    monitor_pb2.EVENT_TYPE_DRIFT_ALARM: events.DRIFT_ALARM,
}


def _window(w: monitor_pb2.Window) -> Window:
    start, end = convert.time_range_to_bounds(w.time_range)
    return Window(start, end, w.series)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """Epoch seconds as a Timestamp."""
    return convert.datetime_to_timestamp(_utc(seconds))


def _range(bounds: tuple[float, float]) -> point_pb2.TimeRange:
    """(start, end) epoch seconds as a TimeRange."""
    return convert.bounds_to_time_range(_utc(bounds[0]), _utc(bounds[1]))


def report_to_proto(r: drift.DriftResult, count_a: int, count_b: int) -> monitor_pb2.DriftReport:
    """A DriftResult (and the windows' point counts) as a DriftReport."""
    return monitor_pb2.DriftReport(
        window_a_count=count_a,
        window_b_count=count_b,
        window_a_used=r.n_a,
        window_b_used=r.n_b,
        reduced_dimension=r.reduced_dimension,
        explained_variance=r.explained_variance,
        mmd=monitor_pb2.MmdTest(
            mmd_squared=r.mmd_squared,
            p_value=r.p_value,
            permutations=r.permutations,
            bandwidth=r.bandwidth,
        ),
        ks=monitor_pb2.KsTests(
            components=[
                monitor_pb2.ComponentTest(
                    component=j,
                    statistic=float(r.ks_statistics[j]),
                    p_value=float(r.ks_p_values[j]),
                    q_value=float(r.ks_q_values[j]),
                    rejected=bool(r.ks_q_values[j] <= r.alpha),
                )
                for j in range(len(r.ks_statistics))
            ],
            rejected_count=r.ks_rejected,
        ),
        centroid_shift=monitor_pb2.CentroidShift(
            cosine_distance=r.centroid_cosine_distance,
            euclidean_distance=r.centroid_euclidean_distance,
        ),
        domain_classifier=monitor_pb2.DomainClassifier(roc_auc=r.roc_auc, folds=r.folds),
        verdict=VERDICT_TO_PROTO[r.verdict],
        thresholds=monitor_pb2.DriftThresholds(alpha=r.alpha, severe_auc=r.severe_auc),
    )


async def create_rule(
    monitor: Monitor,
    name: str,
    rule_id: str,
    spec: monitor_pb2.DriftRule,
    field: str = "drift_rule",
) -> DriftRule:
    """Creates the rule ``spec`` (its window, threshold, series and min_points;
    unset ones take the defaults) on collection ``name`` under ``rule_id``.

    Raises:
        InvalidArgument: no window (violation on ``{field}.window``), or what
            :meth:`Monitor.create_rule` raises.
    """
    if not spec.HasField("window"):
        raise InvalidArgument(
            f"{field}.window is required",
            field_violations=[FieldViolation(f"{field}.window", "required")],
        )
    return await monitor.create_rule(
        name,
        rule_id=rule_id,
        window_seconds=spec.window.ToTimedelta().total_seconds(),
        p_value_threshold=spec.p_value_threshold or DEFAULT_P_VALUE_THRESHOLD,
        series=spec.series,
        min_points=spec.min_points or DEFAULT_MIN_POINTS,
    )


def rule_to_proto(rule: DriftRule) -> monitor_pb2.DriftRule:
    msg = monitor_pb2.DriftRule(
        name=f"collections/{rule.collection}/driftRules/{rule.rule_id}",
        p_value_threshold=rule.p_value_threshold,
        series=rule.series,
        min_points=rule.min_points,
        create_time=_timestamp(rule.create_time),
        alarm_count=rule.alarm_count,
    )
    msg.window.FromTimedelta(timedelta(seconds=rule.window_seconds))
    e = rule.last_evaluation
    if e is not None:
        msg.last_evaluation.CopyFrom(
            monitor_pb2.DriftRuleEvaluation(
                window_a=_range(e.window_a),
                window_b=_range(e.window_b),
                p_value=e.p_value,
                verdict=VERDICT_TO_PROTO[e.verdict],
                evaluate_time=_timestamp(e.evaluate_time),
            )
        )
    return msg


def event_to_proto(e: events.Event) -> monitor_pb2.WatchCollectionResponse:
    msg = monitor_pb2.WatchCollectionResponse(
        sequence=e.sequence, event_time=_timestamp(e.time), collection_version=e.version
    )
    d = e.data
    if isinstance(d, events.PointsUpserted):
        msg.points_upserted.CopyFrom(
            monitor_pb2.PointsUpserted(
                point_ids=d.point_ids,
                start_time=_timestamp(d.start_time),
                end_time=_timestamp(d.end_time),
                series=d.series,
            )
        )
    elif isinstance(d, events.PointsDeleted):
        msg.points_deleted.CopyFrom(monitor_pb2.PointsDeleted(point_ids=d.point_ids))
    elif isinstance(d, events.ChapterDetected):
        msg.chapter_detected.CopyFrom(
            monitor_pb2.ChapterDetected(
                series=d.series,
                start_point_id=d.start_point_id,
                start_time=_timestamp(d.start_time),
                detected_point_id=d.detected_point_id,
                delay_points=d.delay_points,
                probability=d.probability,
            )
        )
    else:
        msg.drift_alarm.CopyFrom(
            monitor_pb2.DriftAlarm(
                drift_rule=d.drift_rule,
                window_a=_range(d.window_a),
                window_b=_range(d.window_b),
                report=report_to_proto(d.report, *d.counts),
            )
        )
    return msg


class MonitorServiceServicer(monitor_pb2_grpc.MonitorServiceServicer):
    """Translates MonitorService RPCs to :class:`~driftd.monitor.monitor.Monitor`
    calls; errors map via :func:`driftd.server.status.maps_errors`."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    @maps_errors
    async def CompareWindows(self, request, context) -> monitor_pb2.CompareWindowsResponse:
        name = parse_collection_name(request.parent)
        out = await self._monitor.compare_windows(
            name,
            _window(request.window_a),
            _window(request.window_b),
            permutations=request.permutations or DEFAULT_PERMUTATIONS,
            alpha=request.alpha or DEFAULT_ALPHA,
            max_points=request.max_points_per_window or DEFAULT_MAX_POINTS_PER_WINDOW,
            seed=request.seed,
        )
        return monitor_pb2.CompareWindowsResponse(
            report=report_to_proto(out.result, out.count_a, out.count_b),
            collection_version=out.version,
        )

    @maps_errors
    async def EmbeddingHealth(self, request, context) -> monitor_pb2.EmbeddingHealthResponse:
        name = parse_collection_name(request.parent)
        out = await self._monitor.embedding_health(
            name,
            _window(request.window),
            max_outliers=request.max_outliers or DEFAULT_MAX_OUTLIERS,
            duplicate_similarity=request.duplicate_similarity or DEFAULT_DUPLICATE_SIMILARITY,
            max_points=request.max_points or DEFAULT_HEALTH_MAX_POINTS,
            seed=request.seed,
        )
        r = out.result
        return monitor_pb2.EmbeddingHealthResponse(
            point_count=out.point_count,
            sampled_count=r.n,
            outliers=[monitor_pb2.Outlier(id=i, score=s) for i, s in out.outliers],
            outlier_count=r.outlier_count,
            near_duplicate_rate=r.near_duplicate_rate,
            norms=monitor_pb2.NormStats(
                min=r.norm_min,
                max=r.norm_max,
                mean=r.norm_mean,
                std=r.norm_std,
                median=r.norm_median,
                non_normalized_count=r.non_normalized_count,
                zero_count=r.zero_count,
            ),
            rank=monitor_pb2.RankStats(
                effective_rank=r.effective_rank,
                participation_ratio=r.participation_ratio,
                top_component_variance=r.top_component_variance,
                rank_ratio=r.rank_ratio,
                collapsed=r.collapsed,
            ),
            model_mixing=monitor_pb2.ModelMixing(
                suspected=r.mixing_suspected,
                reason=r.mixing_reason,
                payload_models=r.payload_models,
                cross_group_spread=r.cross_group_spread,
                within_group_spread=r.within_group_spread,
                minority_fraction=r.minority_fraction,
            ),
            warnings=r.warnings,
            collection_version=out.version,
        )

    @maps_errors
    # Streams with context.write (see below), which the generated stub's type
    # (a response iterator) does not describe.
    async def WatchCollection(self, request, context) -> None:  # type: ignore[override]
        """Writes events as they come. Written with ``context.write`` rather than
        as a generator so that a write blocked by a slow client can be abandoned
        when the watcher falls too far behind (the status then follows the
        messages already buffered)."""
        name = parse_collection_name(request.parent)
        unknown = [t for t in request.event_types if t not in EVENT_TYPE_FROM_PROTO]
        if unknown:
            raise InvalidArgument(
                f"unknown event types {unknown}",
                field_violations=[FieldViolation("event_types", "unknown event type")],
            )
        watcher = await self._monitor.watch(
            name,
            after_sequence=request.after_sequence,
            types=[EVENT_TYPE_FROM_PROTO[t] for t in request.event_types],
        )
        async with watcher:
            while True:
                event = await watcher.next()
                await watcher.deliver(context.write(event_to_proto(event)))

    @maps_errors
    async def CreateDriftRule(self, request, context) -> monitor_pb2.DriftRule:
        name = parse_collection_name(request.parent)
        rule = await create_rule(self._monitor, name, request.drift_rule_id, request.drift_rule)
        return rule_to_proto(rule)

    @maps_errors
    async def GetDriftRule(self, request, context) -> monitor_pb2.DriftRule:
        return rule_to_proto(await self._monitor.get_rule(*parse_rule_name(request.name)))

    @maps_errors
    async def ListDriftRules(self, request, context) -> monitor_pb2.ListDriftRulesResponse:
        name = parse_collection_name(request.parent)
        rules, token = await self._monitor.list_rules(
            name, page_size=request.page_size or DEFAULT_PAGE_SIZE, page_token=request.page_token
        )
        return monitor_pb2.ListDriftRulesResponse(
            drift_rules=[rule_to_proto(r) for r in rules], next_page_token=token
        )

    @maps_errors
    async def DeleteDriftRule(self, request, context) -> empty_pb2.Empty:
        await self._monitor.delete_rule(*parse_rule_name(request.name))
        return empty_pb2.Empty()
