"""`hil gradcheck --compare`: which gradient estimator is fastest on this device, predicted and
measured.

`estimator: auto` measures the device at the starting point and predicts, for every candidate
(central differences, SPSA on Hadamard rows, homodyne), the cheapest settings that reach the
target cosine and their device seconds per estimate. Here each candidate then runs with exactly
those settings, `repeats` times, against the same reference as the check, so the prediction
can be read beside what was achieved: seconds per estimate and median cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hil.core import Averaging, FloatArray, JSONDict
from protocols.auto import AutoEstimator
from protocols.base import Objective
from protocols.diagnostics import Reference, assess


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's predicted settings and cost, and what `repeats` estimates achieved."""

    prediction: JSONDict
    seconds: float  # measured, mean per estimate
    cosine_median: float
    reached: bool

    def as_dict(self) -> JSONDict:
        return {
            "prediction": self.prediction,
            "seconds": self.seconds,
            "cosine_median": self.cosine_median,
            "reached": self.reached,
        }


def compare_estimators(
    objective: Objective,
    theta: FloatArray,
    reference: Reference,
    *,
    target: float,
    repeats: int,
) -> tuple[list[CandidateResult], JSONDict]:
    """Every candidate `auto` predicts for, run with its predicted settings; and what `auto`
    measured. The device's plateau averaging is put back as it was."""
    device = objective.device
    original = device.plateau_samples if isinstance(device, Averaging) else None
    auto = AutoEstimator(AutoEstimator.Settings(target_cosine=target))
    try:
        auto.estimate(objective, theta)
        measured = auto.measured
        predictions = measured.get("predictions", [])
        assert isinstance(predictions, list)
        results = []
        for prediction in predictions:
            assert isinstance(prediction, dict)
            fixed = {"recheck_every": 1_000_000, "recheck_ratio": None}
            runner = AutoEstimator(auto.settings.model_copy(update=fixed))
            runner.load_state_dict({"choice": prediction, "since": 0})
            estimates = [runner.estimate(objective, theta) for _ in range(repeats)]
            quality = assess(estimates, reference)
            cosine = float(np.median(quality.cosine))
            results.append(
                CandidateResult(prediction, quality.device_seconds, cosine, cosine >= target)
            )
    finally:
        if isinstance(device, Averaging) and original is not None:
            device.set_plateau_samples(original)
    return results, measured
