"""The target check of `protocols.target`: noise pooling, the spacing of checks, and when a
start is abandoned (flat or saturated outputs, no progress)."""

from __future__ import annotations

import numpy as np
import pytest

from hil.core import DeviceSpec, FloatArray, Role
from protocols.base import Objective
from protocols.classify import GateTask
from protocols.target import Judgement, RestartSettings, TargetCheck, TargetSettings
from simulators.dnpu import DNPUDevice


class RangedDNPU(DNPUDevice):
    """The simulated DNPU whose output channel reports an ADC range of ±100 nA."""

    @property
    def spec(self) -> DeviceSpec:
        spec = super().spec
        channels = tuple(
            c.model_copy(update={"min": -100.0, "max": 100.0}) if c.role is Role.OUTPUT else c
            for c in spec.channels
        )
        return spec.model_copy(update={"channels": channels})


def _check(restart: RestartSettings | None = None) -> tuple[TargetCheck, GateTask]:
    device = RangedDNPU(DNPUDevice.Settings(input_electrodes=[1, 2]), seed=0)
    task = GateTask(GateTask.Settings(gate="XOR"))
    objective = Objective(device, task, normalized=True)
    settings = TargetSettings(restart=restart or RestartSettings())
    return TargetCheck(objective, task, settings, device), task


def _judgement(check: TargetCheck, task: GateTask, outputs: list[float]) -> Judgement:
    y: FloatArray = np.array(outputs, dtype=float)[:, None]
    verdict = task.judge(y, 1.0)
    return Judgement(1, np.zeros(5), y, None, task.labels, verdict, None, 1.0)


def test_first_check_sets_the_loss_scale_once_and_pools_the_noise() -> None:
    check, task = _check()
    assert task.scale is None
    first = check.check(np.zeros(5), 0)
    scale = task.scale
    assert scale == pytest.approx(2.0 * first.noise)  # scale_noise 2 × σ of the first check
    noise_after_one = check.noise
    check.check(np.full(5, 0.1), 1)
    assert task.scale == scale  # not moved by later checks
    assert check.noise is not None
    assert noise_after_one is not None
    assert check.noise != noise_after_one  # pooled over both checks
    assert check.checks == 2


def test_checks_are_spaced_to_their_share_of_the_device_time() -> None:
    check, _ = _check()
    assert check.due  # nothing measured yet
    check.check(np.zeros(5), 0)
    cost = check.objective.device_time()
    assert not check.due
    check.spent(9.0 * cost)
    assert not check.due  # 0.9 s of checking per 9 s of training is over the 10 % share
    check.spent(1.0 * cost)
    assert check.due


def test_flat_and_saturated_outputs_and_stalls_abandon_a_start() -> None:
    check, task = _check(RestartSettings(patience=2, flat=1.0, saturated=0.01))
    flat = check.stalled(_judgement(check, task, [0.1, 0.2, 0.3, 0.2]))
    assert flat is not None
    assert flat.startswith("outputs flat")
    check.restarted()
    saturated = check.stalled(_judgement(check, task, [-99.5, 10.0, 0.0, 20.0]))
    assert saturated is not None
    assert "saturated" in saturated
    check.restarted()
    assert check.stalled(_judgement(check, task, [-5.0, 1.0, 2.0, 0.0])) is None  # best so far
    assert check.stalled(_judgement(check, task, [-5.0, 0.5, 2.0, 0.0])) is None  # 1 stale
    stalled = check.stalled(_judgement(check, task, [-5.0, 0.5, 2.0, 0.0]))
    assert stalled == "no better score in 2 checks"
    assert check.restarts == 2


def test_restarts_end_at_their_maximum_and_never_after_success() -> None:
    check, task = _check(RestartSettings(max_restarts=1, flat=1.0))
    assert check.stalled(_judgement(check, task, [0.0, 10.0, 10.0, 0.0])) is None  # realised
    assert check.stalled(_judgement(check, task, [0.1, 0.2, 0.3, 0.2])) is not None
    check.restarted()
    assert check.stalled(_judgement(check, task, [0.1, 0.2, 0.3, 0.2])) is None
