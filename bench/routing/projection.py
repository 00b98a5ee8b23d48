"""Fits the router's topic projection (:mod:`driftd.routing.projection`) on the
SGD dialogues outside the routing benchmark's report split and writes it into
the package.

    python -m bench.routing.projection [--vectors-cache FILE]

Fisher's linear discriminant (scikit-learn ``LinearDiscriminantAnalysis``, eigen
solver, Ledoit-Wolf shrinkage) of the user turns' embeddings against their
service domain (the SGD service without its schema number: ``Events_2`` ->
``Events``), on every conversation except the report split's (the calibration
split and the ones the benchmark does not use: 5,899 conversations, 61,000 user
turns), so ``make bench-routing`` reports on dialogues it never saw. Fitted on
the 1,500 calibration conversations alone, it scores a few points better there
and worse on the report split (ROUTE recall 0.68 -> 0.58): more dialogues, a
projection that generalises. Deterministic for the same embeddings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from bench.routing import evaluate as ev
from driftd.config import DEFAULT_EMBED_MODEL
from driftd.routing.projection import TopicProjection, resource_name

# Dimensions whose standard deviation is below this fraction of the median's
# are left out of the fit.
_MIN_RELATIVE_STD = 1e-3
OUT = ev.REPO / "driftd" / "resources" / "routing" / resource_name(DEFAULT_EMBED_MODEL)


def fit(conversations, vectors) -> TopicProjection:
    """The projection fitted on the user turns of ``conversations`` (their
    embeddings ``vectors``, one (turns, d) array per conversation)."""
    rows = [
        (x, t.topic.split("_")[0])
        for c, X in zip(conversations, vectors, strict=True)
        for t, x in zip(c.turns, X, strict=True)
        if t.role == "user"
    ]
    X = np.stack([x for x, _ in rows])
    y = np.array([d for _, d in rows])
    # A model may leave dimensions (almost) constant (all-MiniLM-L6-v2 three, std
    # 1e-33 to 4e-9): whitening would weight them by up to 1e31 and turn float
    # noise into the whole projection. They carry no topic: left out (zero rows).
    std = X.std(axis=0)
    keep = std > _MIN_RELATIVE_STD * np.median(std)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(X[:, keep], y)
    k = len(lda.classes_) - 1
    components = np.zeros((X.shape[1], k))
    components[keep] = lda.scalings_[:, :k]
    return TopicProjection(DEFAULT_EMBED_MODEL, components, tuple(lda.classes_))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=int, default=1000, help="report conversations")
    parser.add_argument(
        "--calibration", type=int, default=1500, help="calibration conversations (fitted on)"
    )
    parser.add_argument(
        "--vectors-cache", type=Path, default=None, help=".npz cache of the user turns' embeddings"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = ev.load()
    _, rep = ev.split(data, args.report, args.calibration)
    held_out = {c.id for c in rep}
    # Only user turns are fitted on: embed only those.
    users = [
        ev.Conversation(c.id, tuple(t for t in c.turns if t.role == "user"))
        for c in data
        if c.id not in held_out
    ]
    projection = fit(users, ev.embed(users, args.vectors_cache))
    projection.save(args.out)
    print(
        f"wrote {args.out}: {projection.components.shape} from the user turns of "
        f"{len(users)} conversations outside the report split, domains "
        f"{', '.join(projection.domains)}"
    )


if __name__ == "__main__":
    main()
