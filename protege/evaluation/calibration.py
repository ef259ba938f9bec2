"""Which answers to hand back to the teacher: a confidence check calibrated on held-out answers (pure).

The mean token probability barely moves when one decisive token (an id, a label, a field
name) is wrong among forty right ones. So a version's check is chosen on its own held-out
split, where the teacher's answers are known: for each signal of the answer's token
log-probabilities (the mean probability, the lowest one, the lowest decile) and each
threshold, "signal below threshold" is scored as a detector of "this answer disagrees with
the teacher": its precision (of the answers it would send to the teacher, the share that
were wrong) and recall (of the wrong answers, the share it catches). The signal and
threshold with the best F1 win, provided at least half of what they catch was wrong
(``MIN_PRECISION``) and they catch at least ``MIN_CAUGHT``; none is chosen from fewer
than ``MIN_DISAGREEMENTS`` wrong answers (nothing to learn from) or when no signal
separates them from the right ones.

An answer disagrees when its metric score is below 1 (it differs in the metric's own terms);
for ``similarity`` (token F1 of prose, below 1 for any paraphrase) when it is below 0.5.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from protege.api.specialist import ConfidenceCheck, ConfidenceSignal, EvaluationMetric

MIN_DISAGREEMENTS = 3
MIN_CAUGHT = 2
MIN_PRECISION = 0.5
LOW_QUANTILE = 0.1


def disagrees(metric: EvaluationMetric, score: float) -> bool:
    """Whether an answer scoring ``score`` against the teacher's counts as a different answer."""
    return score < (0.5 if metric is EvaluationMetric.SIMILARITY else 1.0)


def signal_value(signal: ConfidenceSignal, logprobs: Sequence[float]) -> float | None:
    """The signal of one answer's token log-probabilities, as a probability; None without tokens."""
    if not logprobs:
        return None
    probabilities = sorted(math.exp(max(value, -100.0)) for value in logprobs)
    if signal is ConfidenceSignal.MEAN:
        return sum(probabilities) / len(probabilities)
    if signal is ConfidenceSignal.MINIMUM:
        return probabilities[0]
    return probabilities[int(LOW_QUANTILE * (len(probabilities) - 1))]  # the lowest decile's bound


@dataclass(frozen=True)
class SignalFit:
    """A signal's best threshold on the held-out answers, as a detector of disagreement."""

    signal: ConfidenceSignal
    threshold: float
    precision: float
    recall: float
    fallback_rate: float

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


@dataclass(frozen=True)
class Calibration:
    """What the held-out answers showed, and the check chosen (None, and why, when there is none)."""

    examples: int
    disagreements: int
    fits: tuple[SignalFit, ...]
    check: ConfidenceCheck | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """For the evaluation report: the check, why, and each signal's best threshold."""
        return {
            "check": self.check.to_kube() if self.check else None,
            "reason": self.reason,
            "examples": self.examples,
            "disagreements": self.disagreements,
            "signals": [
                {
                    "signal": fit.signal.value,
                    "threshold": round(fit.threshold, 6),
                    "precision": round(fit.precision, 4),
                    "recall": round(fit.recall, 4),
                    "f1": round(fit.f1, 4),
                    "fallback_rate": round(fit.fallback_rate, 4),
                }
                for fit in self.fits
            ],
        }


def calibrate(answers: Sequence[tuple[Sequence[float], bool]]) -> Calibration:
    """The check for answers given as (token log-probabilities, disagrees with the teacher)."""
    examples = len(answers)
    disagreements = sum(wrong for _, wrong in answers)
    if disagreements < MIN_DISAGREEMENTS:
        reason = (
            f"{disagreements} of {examples} held-out answers disagree with the teacher, fewer than "
            f"{MIN_DISAGREEMENTS}: too few to calibrate a check"
        )
        return Calibration(examples, disagreements, (), None, reason)
    fits = tuple(fit for signal in ConfidenceSignal if (fit := _best_threshold(signal, answers)) is not None)
    usable = [fit for fit in fits if fit.precision >= MIN_PRECISION]
    if not usable:
        reason = (
            f"no signal catches the {disagreements} disagreeing answers of {examples} with a precision "
            f"of {MIN_PRECISION} or more"
        )
        return Calibration(examples, disagreements, fits, None, reason)
    best = max(usable, key=lambda fit: (fit.f1, -fit.fallback_rate))
    check = ConfidenceCheck(
        signal=best.signal,
        threshold=round(best.threshold, 6),
        precision=round(best.precision, 4),
        recall=round(best.recall, 4),
        fallback_rate=round(best.fallback_rate, 4),
        examples=examples,
        disagreements=disagreements,
    )
    reason = (
        f"{best.signal.value} token probability below {check.threshold:.4g}: catches "
        f"{best.recall:.0%} of the {disagreements} disagreeing answers of {examples}, "
        f"{best.precision:.0%} of those it sends to the teacher were wrong"
    )
    return Calibration(examples, disagreements, fits, check, reason)


def _best_threshold(
    signal: ConfidenceSignal, answers: Sequence[tuple[Sequence[float], bool]]
) -> SignalFit | None:
    """The threshold between two observed values with the best F1 (fewer fallbacks on a tie)."""
    values_of = ((signal_value(signal, tokens), wrong) for tokens, wrong in answers)
    scored = [(value, wrong) for value, wrong in values_of if value is not None]
    if not scored:
        return None
    wrong_total = sum(wrong for _, wrong in scored)
    values = sorted({value for value, _ in scored})
    best: SignalFit | None = None
    for low, high in itertools.pairwise(values):
        threshold = (low + high) / 2
        caught = [wrong for value, wrong in scored if value < threshold]
        hits = sum(caught)
        if hits < MIN_CAUGHT:  # one wrong answer below a threshold is as likely chance as signal
            continue
        fit = SignalFit(signal, threshold, hits / len(caught), hits / wrong_total, len(caught) / len(scored))
        if best is None or (fit.f1, -fit.fallback_rate) > (best.f1, -best.fallback_rate):
            best = fit
    return best
