from __future__ import annotations

import numpy as np

from vidtag.runtime.decision import DecisionRule, observed_group_limits

TAGS = ("a1", "a2", "a3", "b1", "b2", "c1")
GROUPS = {"a": ("a1", "a2", "a3"), "b": ("b1", "b2"), "c": ("c1",)}


def rule(**kw: object) -> DecisionRule:
    return DecisionRule(TAGS, GROUPS, (0.5,) * 6, **kw)  # type: ignore[arg-type]


def test_thresholds_rank_and_top_k() -> None:
    s = np.array([0.9, 0.2, 0.6, 0.1, 0.7, 0.4])
    assert rule().select(s) == [0, 4, 2]
    assert rule().select(s, top_k=2) == [0, 4]
    assert rule().select(s, threshold=0.3) == [0, 4, 2, 5]


def test_group_minimum_adds_the_best_of_an_empty_group() -> None:
    s = np.array([0.9, 0.2, 0.6, 0.1, 0.3, 0.4])
    assert rule().select(s) == [0, 2]
    assert rule(group_limits={"b": (1, 0)}).select(s) == [0, 2, 4]


def test_group_maximum_keeps_the_best() -> None:
    s = np.array([0.9, 0.8, 0.6, 0.1, 0.3, 0.4])
    assert rule(group_limits={"a": (0, 2)}).select(s) == [0, 1]


def test_request_threshold_bypasses_group_limits_and_min_tags_holds() -> None:
    s = np.array([0.9, 0.8, 0.6, 0.1, 0.3, 0.4])
    assert rule(group_limits={"a": (0, 1)}).select(s, threshold=0.55) == [0, 1, 2]
    assert rule(min_tags=1).select(np.zeros(6)) == [0]


def test_observed_group_limits() -> None:
    y = np.array([[1, 0, 0, 1, 0, 0], [1, 1, 0, 1, 1, 1], [0, 1, 0, 0, 1, 0]], np.float32)
    assert observed_group_limits(y, TAGS, GROUPS) == {"a": (1, 2), "b": (1, 0), "c": (0, 0)}


def test_predict_is_select_of_every_row() -> None:
    """The vectorised batch rule against the per-row one, on random rules and scores."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        limits = {
            g: (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
            for g in GROUPS
            if rng.random() < 0.7
        }
        r = DecisionRule(
            TAGS,
            GROUPS,
            tuple(rng.uniform(0, 1, 6).tolist()),
            limits,
            min_tags=int(rng.integers(0, 3)),
            top_k=int(rng.integers(0, 4)),
        )
        s = rng.uniform(0, 1, (16, 6))
        s[:, 1] = s[:, 3]  # ties keep the order `select` gives them
        expected = np.zeros(s.shape, dtype=bool)
        for i, row in enumerate(s):
            expected[i, r.select(row)] = True
        assert (r.predict(s) == expected).all()
