"""The topic projection: a linear map of sentence embeddings into a space where
cosine similarity tracks the topic of a task-oriented dialogue turn more than its
wording or dialogue act.

A general sentence model puts "When am I free that day?" close to the event it
follows ("that day", a date) and "Your ticket is booked." close to every other
confirmation. Fisher's linear discriminant (Fisher 1936; scikit-learn's
``LinearDiscriminantAnalysis``, eigen solver with Ledoit-Wolf shrinkage) fitted
on user turns labelled with their service domain finds the directions that
separate domains relative to the spread within one; the router compares
messages and branch centroids along those directions.

``bench/routing/projection.py`` fits it on the Schema-Guided Dialogue training
dialogues outside the routing benchmark's report split (16 service domains:
events, calendar, weather, banks, buses, hotels, restaurants, ...) and writes
``driftd/resources/routing/topic_projection-{model}.npz``; the server uses the
file shipped for its embed model, if any. It helps where conversations move
between such services; for conversations about other subjects, turn it off per
conversation (``RoutingConfig.topic_projection``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np

_DIRECTORY = ("resources", "routing")


def resource_name(model: str) -> str:
    """The file name of ``model``'s projection in ``driftd/resources/routing``."""
    return f"topic_projection-{model}.npz"


@dataclass(frozen=True)
class TopicProjection:
    """``components`` (d, k) float64: an embedding x (d,) maps to ``x @ components``
    (k,). Linear, so a branch's centroid maps to the map of its sum of vectors."""

    model: str
    components: np.ndarray
    domains: tuple[str, ...]

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(..., d) -> (..., k)."""
        return x @ self.components

    def save(self, path) -> None:
        np.savez_compressed(
            path,
            model=np.array(self.model),
            components=self.components,
            domains=np.array(self.domains),
        )

    @classmethod
    def read(cls, file) -> TopicProjection:
        with np.load(file, allow_pickle=False) as z:
            return cls(
                str(z["model"]),
                np.ascontiguousarray(z["components"], dtype=np.float64),
                tuple(str(s) for s in z["domains"]),
            )


@functools.cache
def shipped_projection(model: str) -> TopicProjection | None:
    """The projection shipped for embed model ``model``, or None if there is none."""
    path = resources.files("driftd").joinpath(*_DIRECTORY, resource_name(model))
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return TopicProjection.read(f)
