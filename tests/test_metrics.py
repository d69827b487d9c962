from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vidtag.runtime.decision import DecisionRule
from vidtag.tags import TAG_GROUPS, TAGS
from vidtag.train.metrics import (
    NEVER,
    average_precision,
    calibrate_jaccard,
    calibrate_thresholds,
    evaluate_predictions,
    frequency_prior,
    jaccard,
)


def test_jaccard_rows() -> None:
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    true = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    assert jaccard(pred, true).tolist() == pytest.approx([1 / 3, 1.0, 1.0])


def test_average_precision() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    truth = np.array([1, 0, 1, 0], bool)
    assert average_precision(scores, truth) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(scores, np.zeros(4, bool)))


def test_evaluate_predictions_perfect_and_group_accuracy() -> None:
    rng = np.random.default_rng(0)
    true = rng.random((20, len(TAGS))) < 0.2
    true[:, 0] = True
    scores = true.astype(np.float32) * 0.8 + 0.1
    m = evaluate_predictions(scores, true, true, TAGS, TAG_GROUPS)
    assert m["mean_jaccard"] == 1.0 and m["mAP"] == 1.0 and m["hit_at_1"] == 1.0
    assert m["micro_f1"] == 1.0 and m["macro_f1"] == 1.0
    assert all(m[f"acc_{g}"] == 1.0 for g in TAG_GROUPS)
    pred = true.copy()
    pred[:10, TAGS.index("shake")] = ~pred[:10, TAGS.index("shake")]
    m2 = evaluate_predictions(scores, pred, true, TAGS, TAG_GROUPS)
    assert m2["acc_camera"] == 0.5 and m2["acc_object"] == 1.0 and m2["mean_jaccard"] < 1.0


def test_calibration_finds_separating_threshold() -> None:
    scores = np.array([[0.2], [0.3], [0.6], [0.7]])
    true = np.array([[0], [0], [1], [1]], bool)
    th = calibrate_thresholds(scores, true)[0]
    assert 0.3 < th <= 0.6


def test_the_frequency_prior_is_the_best_constant_set_it_can_grow() -> None:
    rng = np.random.default_rng(0)
    y = np.zeros((400, 6), dtype=bool)
    y[:, 0] = True  # always present
    y[:, 1] = rng.random(400) < 0.7
    y[:, 2:] = rng.random((400, 4)) < 0.1
    freq, chosen = frequency_prior(y)
    assert np.allclose(freq, y.mean(0)) and chosen[0] and chosen[1] and not chosen[2:].any()

    def mean_j(s: np.ndarray) -> float:
        return float(jaccard(np.broadcast_to(s, y.shape), y).mean())

    for k in range(6):  # no single tag, nor the chosen set plus one more, does better
        one = np.eye(6, dtype=bool)[k]
        assert mean_j(chosen) >= mean_j(one) and mean_j(chosen) >= mean_j(chosen | one)


def _rule(n: int, limits: dict[str, tuple[int, int]] | None = None) -> DecisionRule:
    tags = tuple(f"t{i}" for i in range(n))
    return DecisionRule(tags, {"all": tags}, (0.5,) * n, limits or {})


def test_jaccard_calibration_beats_both_starts_on_its_split() -> None:
    rng = np.random.default_rng(1)
    true = rng.random((300, 6)) < np.array([0.9, 0.6, 0.3, 0.2, 0.1, 0.05])
    # Informative for tags 0-2 only, noise for the rest.
    scores = np.clip(true * 0.3 + rng.random((300, 6)) * 0.7, 0, 1)
    scores[:, 3:] = rng.random((300, 3))
    rule = _rule(6)
    th = calibrate_jaccard(scores, true, rule)
    mean_j = lambda t: jaccard(replace(rule, thresholds=tuple(t)).predict(scores), true).mean()  # noqa: E731
    _, prior = frequency_prior(true)
    constant = jaccard(np.broadcast_to(prior, true.shape), true).mean()
    assert mean_j(th) >= mean_j(calibrate_thresholds(scores, true)) - 1e-12
    assert mean_j(th) > constant
    assert (th[4:] == NEVER).all()  # rare tags with noise scores are never worth predicting


def test_jaccard_calibration_of_uninformative_scores_is_no_worse_than_the_constant_answer() -> None:
    rng = np.random.default_rng(2)
    true = rng.random((200, 5)) < np.array([0.95, 0.8, 0.1, 0.1, 0.1])
    scores = rng.random((200, 5))
    rule = _rule(5)
    th = calibrate_jaccard(scores, true, rule)
    pred = replace(rule, thresholds=tuple(th)).predict(scores)
    _, prior = frequency_prior(true)
    assert jaccard(pred, true).mean() >= jaccard(np.broadcast_to(prior, true.shape), true).mean()


def test_jaccard_calibration_of_separable_scores_is_perfect() -> None:
    rng = np.random.default_rng(3)
    true = rng.random((100, 4)) < 0.4
    true[~true.any(1), 0] = True
    scores = np.where(true, 0.6, 0.4) + rng.uniform(-0.05, 0.05, true.shape)
    rule = _rule(4, {"all": (1, 0)})
    th = calibrate_jaccard(scores, true, rule)
    assert jaccard(replace(rule, thresholds=tuple(th)).predict(scores), true).mean() == 1.0
