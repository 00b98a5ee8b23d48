"""The topic projection: the shipped file, the fit on planted domains, and the
router's use of it (on only where the config says so)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bench.routing.evaluate import Conversation, Turn
from bench.routing.projection import fit
from driftd.config import DEFAULT_EMBED_MODEL
from driftd.routing.projection import TopicProjection, shipped_projection
from driftd.routing.router import ConversationState, Router, RoutingConfig, unit


def test_shipped_projection_matches_the_default_model():
    p = shipped_projection(DEFAULT_EMBED_MODEL)
    assert p is not None and p.model == DEFAULT_EMBED_MODEL
    assert p.components.shape == (384, len(p.domains) - 1) and len(p.domains) == 16
    assert np.isfinite(p.components).all() and {"Events", "Calendar"} <= set(p.domains)
    assert shipped_projection("no-such-model") is None


def test_shipped_projection_is_stable_under_float_noise():
    # Float32 rounding of an embedding must not move it in the topic space.
    p = shipped_projection(DEFAULT_EMBED_MODEL)
    rng = np.random.default_rng(2)
    X = np.stack([unit(x) for x in rng.standard_normal((50, 384))])
    q = X + 1e-7 * rng.standard_normal(X.shape)
    a, b = p.transform(X), p.transform(q)
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 1 - 1e-9


def test_fit_separates_planted_domains_that_wording_hides(tmp_path):
    # Unit vectors = a strong "wording" direction shared across domains (questions
    # vs confirmations) + a weak domain direction + noise: raw cosine groups by
    # wording, the projection by domain.
    rng = np.random.default_rng(0)
    d, domains = 64, ["Banks", "Events", "Weather"]
    dom = rng.standard_normal((len(domains), d)) * 0.35
    style = rng.standard_normal((2, d)) * 1.5

    def sample(k, s):
        x = style[s] + dom[k] + 0.3 * rng.standard_normal(d)
        x[-1] = 0.0  # a dimension the model never uses
        return unit(x)

    convs, vectors = [], []
    for i in range(300):
        k = i % 3
        convs.append(Conversation(f"c{i}", (Turn("user", "x", "STAY", f"{domains[k]}_1"),)))
        vectors.append(sample(k, i % 2)[None, :])
    p = fit(convs, vectors)
    assert p.components.shape == (d, 2) and p.domains == tuple(domains)
    assert not p.components[-1].any()  # left out, not weighted by 1 / its tiny spread
    same_domain = (sample(0, 0), sample(0, 1))  # other wording
    same_wording = (sample(0, 0), sample(1, 0))  # other domain

    def cos(pair, f):
        a, b = (unit(f(v)) for v in pair)
        return float(a @ b)

    assert cos(same_domain, lambda v: v) < cos(same_wording, lambda v: v)
    assert cos(same_domain, p.transform) > 0.9 > cos(same_wording, p.transform)
    p.save(tmp_path / "p.npz")
    q = TopicProjection.read(tmp_path / "p.npz")
    assert (q.model, q.domains) == (p.model, p.domains)
    assert np.array_equal(q.components, p.components)


def test_router_uses_the_projection_only_when_configured():
    p = shipped_projection(DEFAULT_EMBED_MODEL)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 384))
    texts = [f"topic{i % 7} detail{i} word{i % 3}" for i in range(60)]

    def run(router, cfg):
        s, out = ConversationState(config=cfg), []
        for i, (x, t) in enumerate(zip(X, texts, strict=True)):
            role = "user" if i % 2 == 0 else "assistant"
            d = router.decide(s, cfg, role, unit(x), t)
            router.apply(s, cfg, d, unit(x), t, 0.0)
            out.append(d)
        return out

    on = RoutingConfig(recent_messages=2)
    off = replace(on, topic_projection=False)
    assert run(Router(p), off) == run(Router(None), off) == run(Router(None), on)
    projected = run(Router(p), on)
    assert [d.similarity for d in projected] != [d.similarity for d in run(Router(p), off)]
    # Branch state stays in the embedding space: a projected similarity is the
    # cosine of the projected message with the projected centroid.
    s = ConversationState(config=on)
    router = Router(p)
    for x in X[:3]:
        d = router.decide(s, replace(on, stay_threshold=-1.0), "user", unit(x), "same topic")
        router.apply(s, on, d, unit(x), "same topic", 0.0)
    centroid = p.transform(sum(unit(x) for x in X[:3]))
    q = unit(p.transform(unit(X[3])))
    got = s.branches[0].centroid_similarity(q, p)
    assert np.isclose(got, q @ centroid / np.linalg.norm(centroid))
