"""Any error's details fit gRPC's metadata limit (issue 13, defect 6), and the
client's address forms (defect 12). No server needed."""

from __future__ import annotations

import base64

import grpc
from google.rpc import error_details_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from driftd.client import _common as common
from driftd.errors import FieldViolation, InvalidArgument
from driftd.server.status import MAX_FIELD_VIOLATIONS, to_rpc_status

texts = st.text(max_size=3000)


def _wire_bytes(status) -> int:
    """grpc-message (percent-encoded) plus grpc-status-details-bin (base64)."""
    pct = sum(3 if b < 0x20 or b > 0x7E or b == 0x25 else 1 for b in status.message.encode())
    return pct + len(base64.b64encode(status.SerializeToString()))


@settings(max_examples=60, deadline=None)
@given(
    message=texts,
    violations=st.lists(st.tuples(texts, texts), max_size=300),
    metadata=st.dictionaries(st.text(max_size=200), texts, max_size=40),
)
def test_every_error_fits_in_8_kb_and_counts_what_it_leaves_out(message, violations, metadata):
    exc = InvalidArgument(
        message,
        reason="INVALID_FIELD",
        field_violations=[FieldViolation(f, d) for f, d in violations],
        metadata=metadata,
    )
    status = to_rpc_status(exc)
    assert _wire_bytes(status) < 8 * 1024
    info, listed = error_details_pb2.ErrorInfo(), []
    status.details[0].Unpack(info)
    assert info.reason == "INVALID_FIELD"
    if len(status.details) > 1:
        bad = error_details_pb2.BadRequest()
        status.details[1].Unpack(bad)
        listed = list(bad.field_violations)
    assert len(listed) <= MAX_FIELD_VIOLATIONS
    if len(listed) < len(violations):
        assert info.metadata["field_violation_count"] == str(len(violations))


def test_short_errors_are_kept_whole():
    exc = InvalidArgument(
        "bad", field_violations=[FieldViolation("points[0].id", "empty")], metadata={"a": 1}
    )
    status = to_rpc_status(exc)
    bad = error_details_pb2.BadRequest()
    status.details[1].Unpack(bad)
    assert status.message == "bad"
    assert [(v.field, v.description) for v in bad.field_violations] == [("points[0].id", "empty")]


def test_http_and_https_targets():
    assert common.parse_target("http://127.0.0.1:50051", None) == ("127.0.0.1:50051", None)
    assert common.parse_target("http://localhost/", None) == ("localhost:80", None)
    target, creds = common.parse_target("https://driftd.example:8443", None)
    assert target == "driftd.example:8443" and isinstance(creds, grpc.ChannelCredentials)
    target, creds = common.parse_target("HTTPS://[::1]", None)
    assert target == "[::1]:443" and creds is not None
    own = grpc.ssl_channel_credentials()
    assert common.parse_target("https://h:1", own) == ("h:1", own)
    for plain in ("127.0.0.1:50051", "dns:///driftd:50051", "unix:/tmp/s"):
        assert common.parse_target(plain, None) == (plain, None)
