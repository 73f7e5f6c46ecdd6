"""edgeship.metrics: the figures every validation is graded on, checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeship.metrics import accuracy, compare, drop_points


def test_classification_outputs_by_hand():
    ref = np.array([[0.7, 0.2, 0.1],
                    [0.1, 0.8, 0.1],
                    [0.3, 0.3, 0.4],
                    [0.5, 0.4, 0.1]])
    cand = np.array([[0.6, 0.3, 0.1],    # same top class (0)
                     [0.1, 0.8, 0.1],    # identical
                     [0.5, 0.2, 0.3],    # top class 2 -> 0: disagrees
                     [0.5, 0.4, 0.1]])   # identical
    labels = np.array([0, 1, 2, 1])
    m = compare(ref, cand, labels)
    assert m["count"] == 4
    # agreement: rows 0, 1, 3 keep their top class
    assert m["top1_agreement"] == pytest.approx(3 / 4)
    # reference top-1 [0, 1, 2, 0] vs labels [0, 1, 2, 1]: 3 of 4; candidate [0, 1, 0, 0]: 2 of 4
    assert m["source_accuracy"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(2 / 4)
    assert drop_points(m) == pytest.approx(25.0)
    # largest |ref - cand|: row 2, column 0: |0.3 - 0.5| = 0.2
    assert m["max_abs_error"] == pytest.approx(0.2)
    # cosine per row, by hand
    cos0 = (0.42 + 0.06 + 0.01) / (math.sqrt(0.54) * math.sqrt(0.46))
    cos2 = (0.15 + 0.06 + 0.12) / (math.sqrt(0.34) * math.sqrt(0.38))
    assert m["cosine"] == pytest.approx((cos0 + 1 + cos2 + 1) / 4)
    # SQNR: signal = sum ref^2 = 0.54 + 0.66 + 0.34 + 0.42 = 1.96; noise = (0.01 + 0.01) + (0.04 + 0.01 + 0.01)
    assert m["sqnr_db"] == pytest.approx(10 * math.log10(1.96 / 0.08))


def test_identical_outputs_are_perfect():
    ref = np.array([[1.0, 2.0], [3.0, -1.0]])
    m = compare(ref, ref.copy(), [1, 0])
    assert m["max_abs_error"] == 0.0 and m["cosine"] == pytest.approx(1.0)
    assert m["top1_agreement"] == 1.0 and m["accuracy"] == m["source_accuracy"] == 1.0
    assert m["sqnr_db"] == 99.0  # no noise at all: the cap
    assert drop_points(m) == 0.0


def test_float_labels_and_higher_rank_outputs():
    # (N, 2, 2) outputs are flattened per sample: top-1 over the 4 values
    ref = np.array([[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]])
    cand = np.array([[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [3.0, 0.0]]])
    m = compare(ref, cand, np.array([1.0, 3.0]))  # float labels holding whole numbers are classes
    assert m["top1_agreement"] == pytest.approx(0.5)
    assert m["source_accuracy"] == 1.0 and m["accuracy"] == pytest.approx(0.5)
    assert m["max_abs_error"] == pytest.approx(3.0)
    # row 1: ref (0,0,0,2) . cand (0,0,3,0) = 0 -> cosine 0; row 0 identical -> 1
    assert m["cosine"] == pytest.approx(0.5)


def test_regression_outputs_have_no_agreement():
    ref = np.array([1.0, 2.0, 3.0])
    cand = np.array([1.0, 2.5, 2.0])
    m = compare(ref, cand)
    assert m["top1_agreement"] is None and "accuracy" not in m
    assert m["max_abs_error"] == pytest.approx(1.0)
    # each sample is one value: cosine of two positive scalars is 1
    assert m["cosine"] == pytest.approx(1.0)
    assert m["sqnr_db"] == pytest.approx(10 * math.log10(14.0 / 1.25))
    assert drop_points(m) == 0.0


def test_zero_vectors_and_shape_mismatch():
    ref = np.zeros((2, 3))
    m = compare(ref, ref.copy())
    assert m["cosine"] == 1.0 and m["sqnr_db"] is None  # no signal: no SQNR
    m = compare(ref, np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert m["cosine"] == pytest.approx(0.5)  # a zero vector against a non-zero one: 0
    with pytest.raises(ValueError, match="shape"):
        compare(np.zeros((2, 3)), np.zeros((2, 4)))


def test_labels_of_another_length_are_ignored_and_drop_without_labels():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    cand = np.array([[1.0, 0.0], [1.0, 0.0]])
    m = compare(ref, cand, [0, 1, 1])
    assert "accuracy" not in m and m["top1_agreement"] == 0.5
    assert drop_points(m) == pytest.approx(50.0)  # agreement loss stands in for the drop


def test_accuracy_helper():
    assert accuracy(np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]]), [1, 0, 0]) == pytest.approx(2 / 3)
