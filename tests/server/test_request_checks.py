"""The request interceptor's range checks of Timestamps and Durations (issue 13,
defect 3), against Python's datetime as the oracle. No server needed; the wire
behaviour is in tests/integration/test_hardening.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from driftd.server.requests import check_times
from driftd.v1 import flow_pb2, point_pb2

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
seconds = st.one_of(
    st.integers(-62_135_596_810, -62_135_596_790),
    st.integers(253_402_300_790, 253_402_300_810),
    st.integers(-(2**63), 2**63 - 1),
)


def _representable(s: int) -> bool:
    try:
        return 1 <= (EPOCH + timedelta(seconds=s)).year <= 9999
    except OverflowError:
        return False


@given(s=seconds, nanos=st.integers(-(2**31), 2**31 - 1), at=st.integers(0, 3))
def test_timestamps_in_repeated_and_nested_fields(s, nanos, at):
    req = point_pb2.UpsertPointsRequest(points=[point_pb2.Point(id=str(i)) for i in range(4)])
    req.points[at].time.CopyFrom(timestamp_pb2.Timestamp(seconds=s, nanos=nanos))
    error = check_times(req)
    valid = _representable(s) and 0 <= nanos < 10**9
    assert (error is None) == valid
    if error is not None:
        assert error.reason == "INVALID_TIMESTAMP"
        assert [v.field for v in error.field_violations] == [f"points[{at}].time"]


@given(s=st.integers(-(2**63), 2**63 - 1), nanos=st.integers(-(10**9), 10**9))
def test_durations(s, nanos):
    req = flow_pb2.SimulatePathsRequest(step_duration=duration_pb2.Duration(seconds=s, nanos=nanos))
    error = check_times(req)
    in_range = abs(s) <= 315_576_000_000 and abs(nanos) < 10**9
    same_sign = not ((s > 0 and nanos < 0) or (s < 0 and nanos > 0))
    assert (error is None) == (in_range and same_sign)
    if error is not None:
        assert (error.reason, error.field_violations[0].field) == (
            "LIMIT_EXCEEDED",
            "step_duration",
        )


def test_unset_times_pass():
    assert check_times(point_pb2.GetTrajectoryRequest(parent="collections/x")) is None
