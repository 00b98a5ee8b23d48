"""Real data: chapters of 70 years of State of the Union paragraphs vs administrations.

The 6,348 paragraphs (driftd/resources/sotu) are embedded once with driftd's embedder
(all-MiniLM-L6-v2, ~6 min on a 2-core machine) and cached under bench/.cache/ (git
ignored), keyed by a hash of the texts. Ground truth: the administration of each
paragraph's speech. Scores: adjusted Rand index of the chapters against the
administrations, and boundary F1 where a chapter start matches an administration's
first speech if its speech is at most one speech away (one-to-one).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from datetime import datetime
from importlib import resources
from pathlib import Path

import numpy as np

from bench.flow.baselines import DriftDBBaseline, ruptures_chapters
from bench.flow.metrics import adjusted_rand, boundary_f1
from bench.flow.table import Result, Row
from driftd.flow import detect_chapters
from driftd.flow.timeline import spread_ties

CACHE = Path(__file__).resolve().parent.parent / ".cache"
MODEL = "all-MiniLM-L6-v2"
DEMO_MIN_SIZE = 200  # what `driftd demo` asks for (driftd/demo.py CHAPTER_MIN_SIZE)
SPEECH_TOLERANCE = 1


def load() -> tuple[list[dict], dict]:
    """Paragraphs in file (= time, then paragraph) order, and the ground truth."""
    base = resources.files("driftd").joinpath("resources/sotu")
    with base.joinpath("sotu_paragraphs.jsonl.gz").open("rb") as raw:
        with gzip.open(raw, "rt", encoding="utf-8") as lines:
            rows = [json.loads(line) for line in lines if line.strip()]
    truth = json.loads(base.joinpath("sotu_chapters.json").read_text(encoding="utf-8"))
    return rows, truth


def embeddings(texts: list[str]) -> np.ndarray:
    """(n, 384) float32 embeddings of ``texts``, from the cache or computed and cached."""
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"sotu-{MODEL}-{key}.npy"
    if path.exists():
        return np.load(path)
    from driftd.engine.embedding import Embedders

    print(f"embedding {len(texts)} SOTU paragraphs once (~6 min), cache: {path}", flush=True)
    X = Embedders().embed(MODEL, texts, count=False)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, X)
    tmp.replace(path)  # a cache file is either complete or absent
    return X


def sotu_rows() -> list[Row]:
    """Chapters on SOTU: driftd (min_size 200 as the demo, and the default 5) next to
    the original DriftDB method and ruptures on the raw vectors."""
    rows, truth = load()
    X = embeddings([r["text"] for r in rows]).astype(np.float64)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    n = len(rows)
    speech_index = {s["speech"]: i for i, s in enumerate(truth["speeches"])}
    speech_of = np.array([speech_index[r["meta"]["speech"]] for r in rows])
    admin_starts = [speech_index[a["first_speech"]] for a in truth["administrations"]]
    # administration label of each paragraph: the number of administration starts passed
    labels = np.searchsorted(np.array(admin_starts[1:]), speech_of, side="right")
    changes = admin_starts[1:]

    def score(starts: list[int]) -> tuple[float, float, int]:
        speeches = [int(speech_of[s]) for s in starts]
        f1 = boundary_f1(speeches, changes, SPEECH_TOLERANCE)
        return adjusted_rand(starts, labels), f1, len(starts) + 1

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    results = {}
    for label, min_size in ((f"min_size {DEMO_MIN_SIZE}", DEMO_MIN_SIZE), ("default (5)", 5)):
        found, secs = timed(lambda m=min_size: detect_chapters(X, min_size=m, random_state=0))
        results[("driftd", label)] = (score([c.start for c in found[1:]]), secs)
        starts, secs = timed(lambda m=min_size: ruptures_chapters(X, min_size=m))
        results[("ruptures", label)] = (score(starts), secs)

    def driftdb():
        t = [datetime.fromisoformat(r["timestamp"]).timestamp() for r in rows]
        presidents = sorted({r["series"] for r in rows})
        series = np.array([presidents.index(r["series"]) for r in rows])
        base = DriftDBBaseline(random_state=0).fit(X, spread_ties(t, series), series)
        return base.chapters(X, base.attractors())

    starts, secs = timed(driftdb)
    original = (score(starts), secs)

    out = []
    for label in (f"min_size {DEMO_MIN_SIZE}", "default (5)"):
        (d_ari, d_f1, d_n), d_secs = results[("driftd", label)]
        (r_ari, r_f1, r_n), r_secs = results[("ruptures", label)]
        (o_ari, o_f1, o_n), o_secs = original
        name = f"SOTU n={n} {label}"
        out += [
            Row(
                name,
                "ARI vs administrations",
                "",
                Result(d_ari, d_secs),
                None,
                "higher",
                {"DriftDB-orig": Result(o_ari, o_secs), "ruptures": Result(r_ari, r_secs)},
            ),
            Row(
                name,
                "boundary F1 (+-1 speech)",
                "",
                Result(d_f1),
                None,
                "higher",
                {"DriftDB-orig": Result(o_f1), "ruptures": Result(r_f1)},
            ),
            Row(
                name,
                f"chapters ({len(admin_starts)} admins)",
                "",
                Result(d_n),
                None,
                None,
                {"DriftDB-orig": Result(o_n), "ruptures": Result(r_n)},
            ),
        ]
    return out
