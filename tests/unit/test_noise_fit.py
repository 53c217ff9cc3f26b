"""The output-noise fit recovers known spectra with honest standard errors (seeded records)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hil.core import FloatArray
from protocols.noise_fit import fit_noise
from simulators.analytic import AnalyticDevice

FS = 1000.0
N = 2**16


def synthetic(white: float, flicker: float, rng: np.random.Generator) -> FloatArray:
    """Gaussian noise whose one-sided PSD is white + flicker·(1 Hz / f)."""
    f = np.fft.rfftfreq(N, 1 / FS)
    psd = white + flicker / np.maximum(f, f[1])
    psd[0] = 0.0
    coeff = rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size)
    return np.fft.irfft(np.sqrt(psd * FS * N / 2) * coeff / math.sqrt(2), N)


def test_standard_errors_are_calibrated_over_forty_records() -> None:
    """z = (fit − truth) / SE over 40 seeded records: mean near 0, spread near 1 (tolerances are
    three standard errors of a mean and of a standard deviation of 40 values)."""
    rng = np.random.default_rng(2)
    z = []
    for _ in range(40):
        fit = fit_noise(synthetic(1e-4, 1e-3, rng), FS, mains=0)
        z.append(
            [
                (fit.white - 1e-4) / fit.white_se,
                (fit.flicker - 1e-3) / fit.flicker_se,
                (fit.alpha - 1.0) / fit.alpha_se,
                (fit.corner - 10.0) / fit.corner_se,
            ]
        )
    scores = np.array(z)
    assert np.all(np.abs(scores.mean(axis=0)) < 3 / math.sqrt(40)), scores.mean(axis=0)
    assert np.all(np.abs(scores.std(axis=0, ddof=1) - 1) < 3 / math.sqrt(2 * 39)), scores.std(
        axis=0, ddof=1
    )


def test_a_mains_line_is_found_and_none_is_invented() -> None:
    rng = np.random.default_rng(5)
    noise = synthetic(1e-4, 1e-3, rng)
    assert fit_noise(noise, FS, mains=50.0).lines == ()
    t = np.arange(N) / FS
    fit = fit_noise(noise + 0.05 * np.sin(2 * np.pi * 50.0 * t), FS, mains=50.0)
    assert [round(line.frequency) for line in fit.lines] == [50]
    assert fit.lines[0].significance > 5


def test_white_noise_of_a_simulator_has_its_configured_floor_and_no_corner() -> None:
    """The analytic simulator's white noise σ per sample is a one-sided floor of 2σ²/fs."""
    settings = AnalyticDevice.Settings.model_validate(
        {"n_inputs": 1, "n_controls": 1, "noise": {"white": 0.01}, "timing": {"sample_rate": FS}}
    )
    device = AnalyticDevice(settings, seed=3)
    trace = device.stream(np.zeros((N, 1)), [device.spec.inputs[0].name])
    fit = fit_noise(trace[:, 0], FS, mains=0)
    assert fit.white == pytest.approx(2 * 0.01**2 / FS, abs=4 * fit.white_se)
    assert fit.corner < fit.frequencies[4]  # below the lowest fitted bin: no 1/f part to speak of


def test_short_or_broken_records_are_refused() -> None:
    with pytest.raises(ValueError, match="512"):
        fit_noise(np.zeros(100), FS)
    with pytest.raises(ValueError, match="finite"):
        fit_noise(np.full(4096, np.nan), FS)
    with pytest.raises(ValueError, match="sample_rate"):
        fit_noise(np.zeros(4096), 0.0)
