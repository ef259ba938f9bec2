"""The fallback check calibrated on held-out answers: the signal that tells wrong answers apart wins."""

from __future__ import annotations

import math
import random

from protege.api.specialist import ConfidenceSignal, EvaluationMetric
from protege.evaluation.calibration import MIN_DISAGREEMENTS, calibrate, disagrees, signal_value


def _answer(rng: random.Random, tokens: int, decisive: float | None) -> list[float]:
    """Token log-probabilities of a confident answer; ``decisive`` replaces one token's probability."""
    probabilities = [rng.uniform(0.75, 0.999) for _ in range(tokens)]
    if decisive is not None:
        probabilities[rng.randrange(tokens)] = decisive
    return [math.log(p) for p in probabilities]


def test_one_doubtful_decisive_token_is_caught_by_the_lowest_probability_not_the_mean() -> None:
    """Wrong answers: one token (an id, a label) in doubt among forty sure ones."""
    rng = random.Random(3)
    answers = [(_answer(rng, 40, None), False) for _ in range(60)]
    answers += [(_answer(rng, 40, rng.uniform(0.05, 0.45)), True) for _ in range(12)]
    answers += [(_answer(rng, 40, rng.uniform(0.05, 0.45)), False) for _ in range(4)]  # unsure, yet right
    rng.shuffle(answers)
    result = calibrate(answers)
    assert result.check is not None and result.check.signal is ConfidenceSignal.MINIMUM
    assert (result.check.examples, result.check.disagreements) == (76, 12)
    # the 4 unsure but right answers look like the wrong ones: either some are sent too, or a few wrong kept
    assert result.check.recall >= 0.75 and result.check.precision >= 0.75
    fits = {fit.signal: fit for fit in result.fits}
    assert fits[ConfidenceSignal.MEAN].f1 < fits[ConfidenceSignal.MINIMUM].f1
    assert "minimum token probability below" in result.reason


def test_too_few_wrong_answers_give_no_check_and_say_why() -> None:
    rng = random.Random(5)
    answers = [(_answer(rng, 10, None), False) for _ in range(50)]
    answers += [(_answer(rng, 10, 0.1), True) for _ in range(MIN_DISAGREEMENTS - 1)]
    result = calibrate(answers)
    assert result.check is None and result.fits == ()
    assert f"{MIN_DISAGREEMENTS - 1} of 52 held-out answers disagree" in result.reason


def test_a_signal_that_cannot_tell_wrong_from_right_gives_no_check() -> None:
    same = [math.log(0.9)] * 8
    answers = [(same, index % 3 == 0) for index in range(30)]  # every answer looks the same
    result = calibrate(answers)
    assert result.check is None and "no signal catches" in result.reason
    assert calibrate([([], True)] * 5).check is None  # no log-probabilities at all


def test_signals_and_what_counts_as_a_disagreement() -> None:
    tokens = [math.log(p) for p in (0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.95, 0.99, 0.85, 0.75, 0.65)]
    assert math.isclose(signal_value(ConfidenceSignal.MINIMUM, tokens) or 0, 0.1)
    assert math.isclose(signal_value(ConfidenceSignal.LOW_DECILE, tokens) or 0, 0.5)  # 2nd lowest of 11
    assert math.isclose(signal_value(ConfidenceSignal.MEAN, tokens) or 0, 7.79 / 11)
    assert signal_value(ConfidenceSignal.MEAN, []) is None
    assert disagrees(EvaluationMetric.EXACT_MATCH, 0.0) and not disagrees(EvaluationMetric.EXACT_MATCH, 1.0)
    assert disagrees(EvaluationMetric.JSON_FIELDS, 0.75)  # one field in four differs
    assert not disagrees(EvaluationMetric.SIMILARITY, 0.8) and disagrees(EvaluationMetric.SIMILARITY, 0.3)
