from __future__ import annotations

import numpy as np
import pytest

from mlcd.domain import datacheck
from mlcd.domain.spec import DatasetSchema

SCHEMA = DatasetSchema.model_validate(
    {
        "featureShape": [2, 2],
        "numClasses": 3,
        "valueMin": 0,
        "valueMax": 1,
        "minSamples": 6,
        "minSamplesPerClass": 2,
    }
)
RNG = np.random.default_rng(0)
X = RNG.random((30, 2, 2))
Y = np.arange(30) % 3


def _corrupt(kind: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = X.copy(), Y.copy()
    if kind == "nan":
        x[0, 0, 0] = np.nan
    elif kind == "inf":
        x[1, 1, 1] = np.inf
    elif kind == "shape":
        x = x.reshape(30, 4)
    elif kind == "range":
        x[2, 0, 0] = 7.0
    elif kind == "labels":
        y[3] = 5
    elif kind == "negative-label":
        y[3] = -1
    elif kind == "float-labels":
        y = y.astype(float) + 0.5
    elif kind == "thin":
        y = np.where(y == 2, 0, y)
        y[0] = 2
    elif kind == "few":
        x, y = x[:4], y[:4]
    elif kind == "mismatch":
        y = y[:-1]
    elif kind == "text":
        x = np.array([["a"] * 4] * 30).reshape(30, 2, 2)
    return x, y


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("nan", "1 feature values are NaN"),
        ("inf", "infinite"),
        ("shape", "schema says (2, 2)"),
        ("range", "above valueMax 1"),
        ("labels", "1 labels outside [0, 3)"),
        ("negative-label", "outside [0, 3)"),
        ("float-labels", "not all integers"),
        ("thin", "classes 2 have fewer"),
        ("few", "fewer than minSamples 6"),
        ("mismatch", "30 feature rows but 29 labels"),
        ("text", "not numeric"),
    ],
)
def test_sanity_problems(kind, words):
    problems = datacheck.sanity_problems(*_corrupt(kind), SCHEMA)
    assert any(words in p for p in problems), problems


def test_sound_data_has_no_problems():
    assert datacheck.sanity_problems(X, Y, SCHEMA) == []


def test_drift_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    big_x, big_y = RNG.random((4000, 2, 2)), np.arange(4000) % 3
    reference = datacheck.statistics(big_x[:2000], big_y[:2000], SCHEMA)
    same = datacheck.statistics(big_x[2000:], big_y[2000:], SCHEMA, edges=reference.edges)
    shifted = datacheck.statistics(
        np.clip(big_x[2000:] + 0.3, 0, 1), big_y[2000:], SCHEMA, edges=reference.edges
    )
    skewed = datacheck.statistics(
        big_x[2000:], np.zeros(2000, dtype=int), SCHEMA, edges=reference.edges
    )
    assert datacheck.drift(same, reference)["feature-psi"] < 0.01
    assert datacheck.drift(shifted, reference)["feature-psi"] > 0.5
    assert datacheck.drift(skewed, reference)["label-psi"] > 1.0


def test_stats_survive_a_round_trip():
    stats = datacheck.statistics(X, Y, SCHEMA)
    again = datacheck.DataStats.model_validate(stats.model_dump(by_alias=True))
    assert again == stats
    assert sum(stats.feature_hist) == pytest.approx(1.0)


def test_holdout_split_is_fixed_and_disjoint():
    train, holdout = datacheck.holdout_split(100, 0.2, seed=7)
    again = datacheck.holdout_split(100, 0.2, seed=7)
    assert np.array_equal(train, again[0]) and np.array_equal(holdout, again[1])
    assert len(holdout) == 20 and len(train) == 80
    assert set(train).isdisjoint(holdout)
    assert not np.array_equal(holdout, datacheck.holdout_split(100, 0.2, seed=8)[1])
