"""``driftd demo``: seventy years of State of the Union addresses as a flow.

Streams the 6,348 paragraphs (1945-2006, vendored in ``driftd/resources/sotu``)
as texts, which the server embeds, then prints the timeline's chapters, the
flow's attractors, a path simulated from a prompt, and how well the chapter
boundaries line up with the changes of administration.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from importlib import resources

from driftd.client import DriftClient
from driftd.config import DEFAULT_EMBED_MODEL, Settings
from driftd.errors import AlreadyExists, DriftdError
from driftd.ingest import describe_error, ingest_rows

#: Minimum paragraphs per chapter: speeches have ~100 paragraphs and a regime
#: should span more than one or two of them (a single speech's topic is not a chapter).
CHAPTER_MIN_SIZE = 200
SIMULATION_STEPS = 100
#: Print every this many steps of the simulated path (and its last one).
STEP_STRIDE = 10
SNIPPET_CHARS = 100


def load_paragraphs() -> list[dict]:
    """The vendored paragraphs, in file (= time, then paragraph) order."""
    data = resources.files("driftd").joinpath("resources/sotu/sotu_paragraphs.jsonl.gz")
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def load_truth() -> dict:
    """``{"administrations": [...], "speeches": [...]}`` in time order."""
    data = resources.files("driftd").joinpath("resources/sotu/sotu_chapters.json")
    return json.loads(data.read_text(encoding="utf-8"))


def as_point(row: dict) -> dict:
    """A paragraph row as a point dict: text, series = president, payload {speech, para, title}."""
    meta = row["meta"]
    return {
        "id": row["id"],
        "timestamp": row["timestamp"],
        "text": row["text"],
        "series": row["series"],
        "payload": {"speech": meta["speech"], "para": meta["para"], "title": meta["title"]},
    }


def boundary_alignment(
    boundary_ids: list[str], paragraphs: dict[str, dict], truth: dict
) -> tuple[int, int, int, float]:
    """How chapter boundaries match administration changes, in speeches.

    A boundary (the first point of a chapter after the first) matches a change
    when its speech is at most one speech away from the new administration's
    first speech, in the chronological list of speeches.

    Returns:
        ``(boundaries within one speech of a change, administration changes,
        changes with such a boundary, chance)``, where ``chance`` is the share
        of paragraphs within one speech of a change: the share of boundaries
        expected to match if they were placed at random points.
    """
    order = {s["speech"]: i for i, s in enumerate(truth["speeches"])}
    changes = [order[a["first_speech"]] for a in truth["administrations"][1:]]

    def near(position: int, targets: list[int]) -> bool:
        return any(abs(position - t) <= 1 for t in targets)

    positions = [order[paragraphs[b]["meta"]["speech"]] for b in boundary_ids]
    aligned = sum(1 for b in positions if near(b, changes))
    found = sum(1 for c in changes if near(c, positions))
    every = [order[p["meta"]["speech"]] for p in paragraphs.values()]
    chance = sum(1 for b in every if near(b, changes)) / len(every)
    return aligned, len(changes), found, chance


@contextlib.contextmanager
def local_server() -> Iterator[str]:
    """Runs ``driftd.server.app.serve`` on a free loopback port over a temporary
    Chroma directory, in a background thread with its own event loop; yields its
    target and stops it (cancelling ``serve``, which drains and closes) on exit.

    Raises:
        RuntimeError: the server stopped before becoming ready.
    """
    from driftd.server.app import serve

    with tempfile.TemporaryDirectory(prefix="driftd-demo-") as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        settings = Settings.from_env(
            address=f"127.0.0.1:{port}", chroma_path=tmp, metrics_port=0, grace_seconds=2.0
        )
        loop = asyncio.new_event_loop()
        settled = threading.Event()  # set once serving, or once serve() has ended
        state: dict = {}

        async def run() -> None:
            serving = asyncio.Event()
            server = state["server"] = asyncio.ensure_future(serve(settings, ready=serving))
            waiter = asyncio.ensure_future(serving.wait())
            await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if serving.is_set():
                settled.set()
            await server

        def thread_main() -> None:
            try:
                loop.run_until_complete(run())
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # handed to the caller's thread
                state["error"] = exc
            finally:
                loop.close()
                settled.set()

        thread = threading.Thread(target=thread_main, name="driftd-demo-server", daemon=True)
        thread.start()
        settled.wait()
        if not thread.is_alive() or "error" in state:
            raise RuntimeError(f"the in-process server stopped: {state.get('error')!r}")
        try:
            yield settings.address
        finally:
            loop.call_soon_threadsafe(state["server"].cancel)
            thread.join(timeout=60)


def main(*, target: str | None, collection: str = "sotu", prompt: str) -> int:
    """Runs the demo against ``target`` or, when None, an in-process server.

    Returns:
        0, or 1 when a section failed (its error is printed and the demo goes on).
    """
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if target is None:
            print("starting an in-process driftd server (temporary storage)...", file=sys.stderr)
            target = stack.enter_context(local_server())
            where = f"in-process server at {target}"
        else:
            where = target
        client = stack.enter_context(DriftClient(target, timeout=600.0))
        return Demo(client, collection, where, started).run(prompt)


class Demo:
    """The demo's sections over one client; records failed sections."""

    def __init__(self, client: DriftClient, collection: str, where: str, started: float) -> None:
        self.client = client
        self.name = collection
        self.where = where
        self.started = started
        self.rows = load_paragraphs()
        self.by_id = {r["id"]: r for r in self.rows}
        self.truth = load_truth()
        self.failed: list[str] = []

    def run(self, prompt: str) -> int:
        ingest = self.ingest()
        chapters = self.section("chapters", self.chapters)
        self.section("attractors", self.attractors)
        self.section("simulated path", lambda: self.simulate(prompt))
        self.summary(ingest, chapters)
        return 1 if self.failed else 0

    def section(self, title: str, fn):
        print(f"\n== {title} " + "=" * (70 - len(title)))
        try:
            return fn()
        except DriftdError as exc:
            print(f"failed: {describe_error(exc)}")
            self.failed.append(title)
            return None

    def ingest(self):
        n_speeches = len(self.truth["speeches"])
        print(
            f"driftd demo: {len(self.rows):,} paragraphs of {n_speeches} State of the Union "
            f"addresses ({self.rows[0]['timestamp'][:4]}-{self.rows[-1]['timestamp'][:4]}) "
            f"-> collections/{self.name} on {self.where}"
        )
        try:
            self.client.create_collection(self.name, embed_model=DEFAULT_EMBED_MODEL)
        except AlreadyExists:
            print(f"collections/{self.name} exists; upserting again (ids are stable)")
        stats = ingest_rows(
            self.client,
            self.name,
            ((i, as_point(r)) for i, r in enumerate(self.rows, 1)),
            total=len(self.rows),
            desc="embedding",
        )
        print(stats.summary(f"{len(self.rows):,} paragraphs as texts (embedded by the server)"))
        return stats

    def speech(self, point_id: str) -> str:
        row = self.by_id.get(point_id)
        return row["meta"]["speech"] if row else f"? {point_id}"

    def chapters(self):
        result = self.client.flow_chapters(self.name, min_size=CHAPTER_MIN_SIZE, representatives=1)
        print(
            f"{len(result.chapters)} chapters (min_size {CHAPTER_MIN_SIZE}, penalty chosen by "
            f"the server), collection version {result.version}"
        )
        for c in result.chapters:
            print(
                f"{c.index:>3}  {_day(c.start_time)} .. {_day(c.end_time)}  "
                f"{c.point_count:>4} paragraphs  {self.speech(c.start_point_id)} -> "
                f"{self.speech(c.end_point_id)}"
                + (f"  [{c.attractor_id}]" if c.attractor_id else "")
            )
            for r in c.representatives:
                print(f'       "{_snippet(r.text)}"')
        return result

    def attractors(self) -> None:
        result = self.client.flow_attractors(self.name, representatives=3)
        print(f"{len(result.attractors)} fixed points, largest basin first")
        for a in result.attractors:
            print(
                f"{a.id}: {a.stability}, basin {a.basin_fraction:.0%}, reproducibility "
                f"{a.reproducibility:.0%}, speed {a.speed:.3g}/s"
            )
            for r in a.representatives:
                print(f'    {self.speech(r.id):<18} sim {r.similarity:.2f}  "{_snippet(r.text)}"')

    def simulate(self, prompt: str) -> None:
        steps = self.client.flow_simulate(
            self.name, text=prompt, steps=SIMULATION_STEPS, include_vectors=False
        )
        print(f'from "{prompt}": {len(steps)} steps')
        for s in steps:
            if s.step % STEP_STRIDE and s is not steps[-1]:
                continue
            row = self.by_id.get(s.nearest_point_id)
            date = row["timestamp"][:10] if row else "?"
            print(
                f"step {s.step:>4}  nearest {self.speech(s.nearest_point_id):<18} ({date}) "
                f"sim {s.nearest_similarity:.2f}  speed {s.speed:.3g}/s"
                + ("" if s.in_support else "  outside support")
                + (f"  stop: {s.stop_reason}" if s.stop_reason else "")
            )
            if row:
                print(f'            "{_snippet(row["text"])}"')

    def summary(self, ingest, chapters) -> None:
        print("\n== summary " + "=" * 63)
        wall = time.perf_counter() - self.started
        print(f"wall time            {wall:.1f} s (ingest {ingest.seconds:.1f} s)")
        print(f"texts embedded       {ingest.accepted:,} ({ingest.points_per_second:,.0f} texts/s)")
        if chapters is not None:
            boundaries = [c.start_point_id for c in chapters.chapters[1:]]
            aligned, changes, found, chance = boundary_alignment(boundaries, self.by_id, self.truth)
            print(
                f"chapter boundaries   {aligned} of {len(boundaries)} within one speech of an "
                f"administration change (random boundaries: {chance:.0%})"
            )
            print(f"administrations      {changes} changes, {found} of them matched by a boundary")
        if self.failed:
            print(f"failed sections      {', '.join(self.failed)}")


def _day(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d")


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 3] + "..."
