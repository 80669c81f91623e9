"""bench/late_fusion.py's weight choice on constructed probabilities (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import late_fusion

Y = np.array([0, 1, 0, 1, 1, 0])
RIGHT = np.eye(2)[Y] * 0.9 + 0.05  # 0.95 on the true class
UNSURE = np.full((len(Y), 2), 0.5)


def test_the_weight_follows_the_model_that_is_right_on_the_validation_rows():
    assert late_fusion.blend_weight(UNSURE, RIGHT, Y) == 0.0
    assert late_fusion.blend_weight(RIGHT, UNSURE, Y) == 1.0


def test_equal_models_tie_towards_the_specialist():
    assert late_fusion.blend_weight(RIGHT, RIGHT, Y) == 1.0


def test_two_half_right_models_blend_in_the_middle():
    # Each is confidently right on its own half of the rows and wrong on the other.
    first_half = np.arange(len(Y)) < 3
    wrong = np.eye(2)[1 - Y] * 0.9 + 0.05
    specialist = np.where(first_half[:, None], RIGHT, wrong)
    classic = np.where(first_half[:, None], wrong, RIGHT)
    assert late_fusion.blend_weight(specialist, classic, Y) == 0.5
    blended = late_fusion.blend(specialist, classic, 0.5)
    assert late_fusion.log_loss(blended, Y) == pytest.approx(-np.log(0.5))
    assert late_fusion.accuracy(specialist, Y) == 0.5
