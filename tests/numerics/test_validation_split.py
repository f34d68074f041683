"""data.validation_fraction: a validation split for tuning, carved from the training data,
seeded and stratified, disjoint from training and from the held-out test split
(issue 23, rule 2)."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from fleetsim.numerics.config import DataConfig
from fleetsim.numerics.partition import split_for_run, split_with_validation, train_eval_split


def _labels() -> np.ndarray:
    # 60 of class 0, 30 of class 1, 10 of class 2 (100 examples)
    return np.repeat(np.arange(3), [60, 30, 10])


def test_three_splits_are_disjoint_stratified_and_seeded() -> None:
    labels = _labels()
    cfg = DataConfig(eval_fraction=0.2, validation_fraction=0.25)
    train, validation, test = split_with_validation(cfg, labels, seed=3)
    # test: 20 examples (12/6/2); validation: 0.25 × 80 = 20 of the rest (12/6/2);
    # train: the other 60 (36/18/6)
    assert [np.bincount(labels[s], minlength=3).tolist() for s in (train, validation, test)] == [
        [36, 18, 6], [12, 6, 2], [12, 6, 2]
    ]
    assert not set(train) & set(validation) and not set(train) & set(test)
    assert not set(validation) & set(test)
    assert sorted({*train, *validation, *test}) == list(range(100))
    # the test split is the one a run without validation holds out: the validation split
    # comes out of training only
    before_train, before_test = train_eval_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(test, before_test)
    assert set(train) | set(validation) == set(before_train)
    # seeded: same seed, same split; another seed, another split
    again = split_with_validation(cfg, labels, seed=3)
    for a, b in zip(again, (train, validation, test)):
        np.testing.assert_array_equal(a, b)
    assert set(split_with_validation(cfg, labels, seed=4)[1]) != set(validation)
    # split_for_run gives the training and test parts (validation in neither)
    run_train, run_test = split_for_run(cfg, labels, seed=3)
    np.testing.assert_array_equal(run_train, train)
    np.testing.assert_array_equal(run_test, test)


def test_no_validation_split_trains_on_what_it_did_before() -> None:
    labels = _labels()
    train, validation, test = split_with_validation(DataConfig(eval_fraction=0.2), labels, 5)
    assert len(validation) == 0
    np.testing.assert_array_equal(train, train_eval_split(labels, 0.2, seed=5)[0])


def test_caps_apply_after_the_split() -> None:
    labels = _labels()
    cfg = DataConfig(eval_fraction=0.2, validation_fraction=0.25, max_examples=30,
                     max_validation_examples=10)
    train, validation, test = split_with_validation(cfg, labels, seed=3)
    assert len(train) == 30 and len(validation) == 10 and len(test) == 20
    assert np.bincount(labels[validation], minlength=3).tolist() == [6, 3, 1]
    full_train, full_validation, _ = split_with_validation(
        DataConfig(eval_fraction=0.2, validation_fraction=0.25), labels, seed=3
    )
    assert set(validation) <= set(full_validation) and set(train) <= set(full_train)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_validation_fraction_range(value: float) -> None:
    with pytest.raises(pydantic.ValidationError, match="validation_fraction"):
        DataConfig(validation_fraction=value)
