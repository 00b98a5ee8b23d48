"""Online backups: collections exported from a running server to one file, and
imported into a server again (``driftd backup`` / ``driftd restore``).

The file (format ``driftd-backup``, version 1) is a tar archive, gzip-compressed
when its name ends in ``.gz``, holding for each collection ``ID``:

- ``collections/ID/collection.json``: the first message of ExportCollection (a
  ``driftd.v1.ExportCollectionResponse`` in protobuf's JSON mapping): the
  collection's settings and counts, and its drift rules;
- ``collections/ID/points.ndjson``: one ``driftd.v1.Point`` per line (protobuf
  JSON: id, time as RFC 3339, series, vector, text, payload) in time order.
  Vector components are written in the shortest form that reads back as the
  same float32, so restored vectors are bit-identical;

and last ``manifest.json``: ``{"format": "driftd-backup", "version": 1,
"created", "driftd_version", "source", "collections": [{"id", "point_count",
"drift_rule_count", "files": {NAME: {"sha256", "bytes"}}}]}``. A restore checks
every file's size and SHA-256 and every point count against the manifest before
it writes anything.

Needs only the Python client (grpcio, protobuf).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format

from driftd import __version__
from driftd.v1 import collection_pb2, point_pb2

FORMAT = "driftd-backup"
VERSION = 1
MANIFEST = "manifest.json"
#: Points per ImportCollection message on restore.
IMPORT_CHUNK = 500


class BackupError(ValueError):
    """A backup file that cannot be restored: not one, a newer version, or its
    contents do not match the manifest (corrupt or truncated)."""


@dataclass(frozen=True)
class Saved:
    """One collection written by :func:`backup`."""

    id: str
    point_count: int
    drift_rule_count: int


#: Makes a progress bar (``update(n)``, ``close()``) from a total and a label.
ProgressFactory = Callable[[int | None, str], Any]


class _Hashing:
    """A binary file writer that counts bytes and hashes them as they go."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)

    def entry(self) -> dict[str, Any]:
        return {"sha256": self.sha.hexdigest(), "bytes": self.size}


def _open(path: Path, *, write: bool = False, gz: bool | None = None) -> tarfile.TarFile:
    """A tar archive, gzip-compressed if ``gz`` (None: if the name ends in .gz)."""
    if gz is None:
        gz = path.name.endswith(".gz")
    if write:
        return tarfile.open(path, "w:gz" if gz else "w")
    return tarfile.open(path, "r:gz" if gz else "r")


def backup(
    client,
    output: Path,
    collections: Sequence[str] = (),
    *,
    progress: ProgressFactory | None = None,
) -> list[Saved]:
    """Exports ``collections`` (ids; empty: every collection) from the server of
    ``client`` (a :class:`driftd.client.DriftClient`) into the file ``output``,
    written to a temporary name and renamed when complete, with a ``progress``
    bar per collection. Returns the :class:`Saved` collections.

    Raises:
        driftd.errors.DriftdError: an export failed (e.g. NotFound); no file is left.
        OSError: the file cannot be written.
    """
    output = Path(output)
    ids = list(collections) or [c.name for c in client.list_collections()]
    saved, entries = [], []
    tmp = output.with_name(f".{output.name}.partial")
    try:
        with (
            _open(tmp, write=True, gz=output.name.endswith(".gz")) as tar,
            tempfile.TemporaryDirectory() as stage,
        ):
            for cid in ids:
                entry, item = _export_one(client, cid, Path(stage), tar, progress)
                entries.append(entry)
                saved.append(item)
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "created": datetime.now(UTC).isoformat(),
                "driftd_version": __version__,
                "source": client.target,
                "collections": entries,
            }
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(data), int(datetime.now(UTC).timestamp())
            tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return saved


def _export_one(
    client, cid: str, stage: Path, tar: tarfile.TarFile, progress: ProgressFactory | None
):
    """Streams collection ``cid`` into two staged files, then adds them to ``tar``."""
    header_path, points_path = stage / f"{cid}.json", stage / f"{cid}.ndjson"
    responses = client.export_collection(cid)
    bar = None
    count = 0
    try:
        header = next(responses)
        with open(header_path, "wb") as f:
            header_file = _Hashing(f)
            header_file.write(json_format.MessageToJson(header, indent=2).encode() + b"\n")
        if progress is not None:
            bar = progress(header.collection.point_count, f"backup {cid}")
        with open(points_path, "wb") as f:
            points_file = _Hashing(f)
            for response in responses:
                for p in response.points:
                    points_file.write(json_format.MessageToJson(p, indent=None).encode() + b"\n")
                count += len(response.points)
                if bar is not None:
                    bar.update(len(response.points))
    finally:
        responses.close()
        if bar is not None:
            bar.close()
    files = {"collection.json": header_file.entry(), "points.ndjson": points_file.entry()}
    for name, path in (("collection.json", header_path), ("points.ndjson", points_path)):
        tar.add(path, arcname=f"collections/{cid}/{name}")
        path.unlink()
    rules = len(header.drift_rules)
    entry = {"id": cid, "point_count": count, "drift_rule_count": rules, "files": files}
    return entry, Saved(cid, count, rules)


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    """The file ``name`` of the archive, to read.

    Raises:
        KeyError: no such file.
    """
    f = tar.extractfile(name)
    if f is None:
        raise KeyError(f"{name} is not a file")
    return f


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of backup file ``path``, after checking every file it lists
    (size and SHA-256) and every collection's point count.

    Raises:
        BackupError: not a driftd backup, a newer format version, or a mismatch.
        OSError: the file cannot be read.
    """
    try:
        with _open(Path(path)) as tar:
            try:
                manifest = json.load(_member(tar, MANIFEST))
            except KeyError:
                raise BackupError(f"{path}: no {MANIFEST}: not a driftd backup") from None
            if manifest.get("format") != FORMAT:
                raise BackupError(
                    f"{path}: not a driftd backup (format {manifest.get('format')!r})"
                )
            if manifest.get("version") != VERSION:
                raise BackupError(
                    f"{path}: backup format version {manifest.get('version')}; this driftd "
                    f"reads version {VERSION}"
                )
            for c in manifest["collections"]:
                for name, want in c["files"].items():
                    member = f"collections/{c['id']}/{name}"
                    sha, size, lines = hashlib.sha256(), 0, 0
                    f = _member(tar, member)
                    while chunk := f.read(1 << 20):
                        sha.update(chunk)
                        size += len(chunk)
                        lines += chunk.count(b"\n")
                    if size != want["bytes"] or sha.hexdigest() != want["sha256"]:
                        raise BackupError(
                            f"{path}: {member} does not match the manifest's checksum "
                            f"(sha256 {sha.hexdigest()[:12]}..., {size} bytes; expected "
                            f"{want['sha256'][:12]}..., {want['bytes']} bytes): the file is "
                            "corrupt"
                        )
                    if name == "points.ndjson" and lines != c["point_count"]:
                        raise BackupError(
                            f"{path}: {member} has {lines} points, the manifest says "
                            f"{c['point_count']}"
                        )
    except (tarfile.TarError, KeyError, json.JSONDecodeError) as exc:
        raise BackupError(f"{path}: not a readable driftd backup: {exc}") from exc
    return manifest


def restore(
    client,
    path: Path,
    *,
    collections: Sequence[str] = (),
    rename: str = "",
    progress: ProgressFactory | None = None,
) -> list[collection_pb2.ImportCollectionResponse]:
    """Imports the collections of backup file ``path`` (``collections``: only
    these ids) into the server of ``client``, each under its own id, or under
    ``rename`` when exactly one collection is restored. The file is verified
    (:func:`read_manifest`) before anything is written; each collection is
    imported all or nothing, with a ``progress`` bar.

    Raises:
        BackupError: the file does not verify, an id is not in it, or ``rename``
            with more than one collection.
        driftd.errors.AlreadyExists: a collection id is taken on the server.
    """
    manifest = read_manifest(path)
    available = {c["id"]: c for c in manifest["collections"]}
    missing = [c for c in collections if c not in available]
    if missing:
        raise BackupError(f"{path}: no collection {', '.join(missing)} in the backup")
    chosen = [available[c] for c in collections] or manifest["collections"]
    if rename and len(chosen) != 1:
        raise BackupError(
            f"--as names one collection; the backup holds {len(chosen)} (choose with --collection)"
        )
    out = []
    with _open(Path(path)) as tar:
        for c in chosen:
            header = json_format.Parse(
                _member(tar, f"collections/{c['id']}/collection.json").read(),
                collection_pb2.ExportCollectionResponse(),
            )
            target = rename or c["id"]
            bar = progress(c["point_count"], f"restore {target}") if progress else None
            points = _member(tar, f"collections/{c['id']}/points.ndjson")
            try:
                out.append(client.import_collection(_requests(target, header, points, bar)))
            finally:
                if bar is not None:
                    bar.close()
    return out


def _requests(
    target: str, header: collection_pb2.ExportCollectionResponse, lines: Iterable[bytes], bar
) -> Iterator[collection_pb2.ImportCollectionRequest]:
    yield collection_pb2.ImportCollectionRequest(
        collection_id=target, collection=header.collection, drift_rules=header.drift_rules
    )
    chunk: list[point_pb2.Point] = []
    for line in lines:
        chunk.append(json_format.Parse(line, point_pb2.Point()))
        if len(chunk) == IMPORT_CHUNK:
            yield collection_pb2.ImportCollectionRequest(points=chunk)
            if bar is not None:
                bar.update(len(chunk))
            chunk = []
    if chunk:
        yield collection_pb2.ImportCollectionRequest(points=chunk)
        if bar is not None:
            bar.update(len(chunk))
