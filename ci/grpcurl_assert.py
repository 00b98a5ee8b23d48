"""Checks the recorded grpcurl calls of README.md's session (ci/grpcurl_check.sh).

Every command must exit 0; `list` must show driftd's services, health and
reflection; `describe` must show the proto comments; each RPC's JSON answer is
checked against its request; and the session must cover list, describe, every
unary RPC of the core services (Collection, Point, Flow) and a server stream.
RPCs of other services are checked when the session calls them.

Usage: python ci/grpcurl_assert.py CALLS_DIR SESSION_FILE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from driftd.v1 import collection_pb2, flow_pb2, point_pb2

CORE = [
    f.DESCRIPTOR.services_by_name[name]
    for f, name in (
        (collection_pb2, "CollectionService"),
        (point_pb2, "PointService"),
        (flow_pb2, "FlowService"),
    )
]


def messages(text: str) -> list[dict]:
    """The JSON objects grpcurl printed, one per response message."""
    out, dec, i = [], json.JSONDecoder(), 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.append(obj)


def check_rpc(method: str, req: dict, resp: list[dict]) -> list[str]:
    """Problems with one RPC's answer (proto JSON: camelCase, zero values omitted)."""
    one = resp[0] if len(resp) == 1 else None
    errs: list[str] = []

    def want(cond: bool, what: str) -> None:
        if not cond:
            errs.append(f"{method}: {what}; got {json.dumps(resp)[:300]}")

    name = method.rsplit("/", 1)[1]
    if name not in {"SimulatePaths", "GetTrajectory"}:
        want(one is not None, "one response message")
        if one is None:
            return errs
    if name == "CreateCollection":
        want(one.get("name") == f"collections/{req['collection_id']}", "the new collection's name")
    elif name == "GetCollection":
        want(one.get("name") == req["name"], "the named collection")
        want(int(one.get("pointCount", 0)) > 0, "its points counted")
    elif name == "ListCollections":
        want(len(one.get("collections", [])) > 0, "at least one collection")
    elif name == "AttachCollection":
        want(one.get("name") == f"collections/{req['chroma_collection']}", "the adopted name")
        want(one.get("attached") is True, "attached: true")
    elif name == "DeleteCollection":
        want(one == {}, "an empty response")
    elif name == "UpsertPoints":
        want(one.get("upsertedCount") == len(req["points"]), "every point upserted")
    elif name == "GetPoints":
        got = [p["id"] for p in one.get("points", [])]
        want(got + one.get("missingIds", []) and set(got) <= set(req["ids"]), "the asked points")
        want(bool(got), "at least one point found")
    elif name == "DeletePoints":
        want(one.get("deletedCount", 0) >= 1, "a point deleted")
    elif name == "SearchPoints":
        hits = one.get("results", [])
        want(0 < len(hits) <= (req.get("top_k") or 10), "between 1 and top_k hits")
    elif name == "ProbeFlow":
        want(len(one.get("velocity", [])) > 0 and "speed" in one, "a velocity and a speed")
    elif name == "SimulatePaths":
        steps = [m.get("step", 0) for m in resp]
        want(steps == list(range(len(steps))) and len(steps) >= 2, "steps 0, 1, ... streamed")
        want(len(steps) <= (req.get("steps") or 100) + 1, "no more than steps + 1 messages")
        want(bool(resp) and bool(resp[-1].get("stopReason")), "a stop_reason on the last step")
    elif name == "GetTrajectory":
        want(sum(len(m.get("points", [])) for m in resp) > 0, "points streamed")
    elif name == "FindAttractors":
        want("collectionVersion" in one, "the fitted version")
    elif name == "DetectChapters":
        want(len(one.get("chapters", [])) >= 1, "at least one chapter")
    elif name == "Check":
        want(one.get("status") == "SERVING", "SERVING")
    return errs


def main(calls_dir: str, session: str) -> int:
    problems: list[str] = []
    called: set[str] = set()
    listed = described = False
    calls = sorted(Path(calls_dir).iterdir())
    for call in calls:
        args = (call / "args").read_bytes().decode().split("\0")[:-1]
        rc = int((call / "rc").read_text())
        out = (call / "stdout").read_text()
        where = f"command {call.name} (grpcurl {' '.join(a[:40] for a in args)})"
        if rc != 0:
            problems.append(f"{where}: exit {rc}: {(call / 'stderr').read_text()[:500]}")
            continue
        req = json.loads(args[args.index("-d") + 1]) if "-d" in args else {}
        positional = [
            a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] != "-d"
        ]
        verb = positional[1] if len(positional) > 1 else ""
        if verb == "list":
            listed = True
            for svc in (*(s.full_name for s in CORE), "grpc.health.v1.Health"):
                if svc not in out.split():
                    problems.append(f"{where}: {svc} not listed")
            if "grpc.reflection.v1alpha.ServerReflection" not in out:
                problems.append(f"{where}: reflection not listed")
        elif verb == "describe":
            described = True
            if "//" not in out or "rpc " not in out:
                problems.append(f"{where}: describe shows no RPCs with comments")
        elif "/" in verb:
            called.add(verb)
            try:
                problems += check_rpc(verb, req, messages(out))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                problems.append(f"{where}: cannot check the answer: {exc!r}: {out[:300]}")
        else:
            problems.append(f"{where}: not a list, describe or RPC call")

    if not listed:
        problems.append("the session has no `grpcurl ... list`")
    if not described:
        problems.append("the session has no `grpcurl ... describe`")
    streams = {f"{s.full_name}/{m.name}" for s in CORE for m in s.methods if m.server_streaming}
    unary = {
        f"{s.full_name}/{m.name}"
        for s in CORE
        for m in s.methods
        if not m.server_streaming and not m.client_streaming
    }
    for m in sorted(unary - called):
        problems.append(f"the README session does not call the unary RPC {m}")
    if not streams & called:
        problems.append(f"the README session calls no server stream ({', '.join(sorted(streams))})")

    for p in problems:
        print("FAIL", p)
    print(
        f"{len(calls)} grpcurl commands from {session}: {len(called)} RPCs called "
        f"({len(unary & called)}/{len(unary)} core unary, "
        f"{len(streams & called)} server stream(s)), {len(problems)} problems"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
