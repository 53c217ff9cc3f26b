"""Surrogates from elsewhere: a PyTorch state dict to the DNPU's weights_file, and the CLI."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from hil import surrogates
from hil.cli import app
from hil.core import ConfigError, HilError
from hil.surrogates import (
    convert,
    load_checkpoint,
    network_arrays,
    recorded_amplification,
    write_npz,
)
from simulators.dnpu import DNPUDevice

runner = CliRunner()


def sequential(widths: list[int], seed: int = 0) -> dict[str, Any]:
    """The state dict of nn.Sequential(Linear, ReLU, Linear, …): keys 0.weight, 0.bias, 2.…"""
    rng = np.random.default_rng(seed)
    state: dict[str, Any] = {}
    for j, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        state[f"{2 * j}.weight"] = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(n_out, n_in))
        state[f"{2 * j}.bias"] = rng.normal(0.0, 0.3, size=n_out)
    return state


def forward(state: Mapping[str, Any], v: np.ndarray) -> np.ndarray:
    """The network of a `sequential` state dict, ReLU between layers, computed as the DNPU does."""
    weights = [np.asarray(value) for key, value in state.items() if key.endswith("weight")]
    biases = [np.asarray(value) for key, value in state.items() if key.endswith("bias")]
    h = v
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        h = np.maximum(h @ w.T + b, 0.0)
    return np.asarray((h @ weights[-1].T + biases[-1])[:, 0])


def voltages(device: DNPUDevice, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(θ, x, electrode voltages) of n random points inside the electrode ranges."""
    rng = np.random.default_rng(1)
    lo = np.array([c.min for c in (*device.spec.controls, *device.spec.inputs)])
    hi = np.array([c.max for c in (*device.spec.controls, *device.spec.inputs)])
    points = rng.uniform(lo, hi, size=(n, lo.size))
    n_controls = len(device.spec.controls)
    theta, x = points[:, :n_controls], points[:, n_controls:]
    return theta, x, device.electrode_voltages(np.hstack([x, theta]))


class FakeTensor:
    """What a torch tensor offers the converter: .detach().cpu().numpy()."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = value

    def detach(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self.value


def test_a_converted_state_dict_is_the_dnpu_core_exactly(tmp_path: Path) -> None:
    state = sequential([7, 16, 8, 1])
    arrays = network_arrays(state)
    assert sorted(arrays) == ["bias_0", "bias_1", "bias_2", "weight_0", "weight_1", "weight_2"]
    assert all(a.dtype == np.float64 for a in arrays.values())
    write_npz(tmp_path / "net.npz", arrays, {"source": "test"})
    device = DNPUDevice(DNPUDevice.Settings(weights_file=tmp_path / "net.npz"))
    theta, x, v = voltages(device, 50)
    np.testing.assert_array_equal(device.true_output(theta, x)[:, 0], forward(state, v))


def test_tensors_and_training_metadata(tmp_path: Path) -> None:
    """Tensor-likes are read through .detach().cpu().numpy(); non-arrays (SkyNEt's info dict,
    strings, numbers) are metadata and skipped."""
    state = sequential([7, 4, 1], seed=2)
    mixed: dict[str, Any] = {"info": {"activation": "ReLU", "loss": "MSE"}, "epoch": 12}
    mixed |= {key: FakeTensor(value.astype(np.float32)) for key, value in state.items()}
    mixed["note"] = "trained on device D7"
    arrays = network_arrays(mixed)
    np.testing.assert_array_equal(arrays["weight_1"], state["2.weight"].astype(np.float32))
    bare = network_arrays({"weight": np.ones((1, 7)), "bias": np.zeros(1)})  # one nn.Linear
    assert [a.shape for a in bare.values()] == [(1, 7), (1,)]


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model_state_dict": s, "optimizer_state_dict": {"lr": 1e-3}},
        lambda s: {"model": s},
        lambda s: {"model": {"state_dict": s}},
    ],
    ids=["state_dict", "model_state_dict", "model", "model.state_dict"],
)
def test_nested_checkpoints(wrap: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    state = sequential([7, 5, 1])
    arrays = network_arrays(wrap(state))
    np.testing.assert_array_equal(arrays["weight_0"], state["0.weight"])
    np.testing.assert_array_equal(arrays["bias_1"], state["2.bias"])


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [
        # brains-py: info beside model_state_dict, one amplification per output electrode
        (
            {
                "info": {"electrode_info": {"output_electrodes": {"amplification": [28.5]}}},
                "model_state_dict": {},
            },
            28.5,
        ),
        # SkyNEt: info inside the state dict, the data's meta keys at its top
        ({"info": {"activation": "ReLU", "amplification": 10}}, 10.0),
        (
            {
                "state_dict": {
                    "info_dict": {"processor": {"amplification": FakeTensor(np.array(100.0))}}
                }
            },
            100.0,
        ),
        ({"info": {"amplification": None, "activation": "ReLU"}}, None),
        ({"info": {"activation": "ReLU"}}, None),
        ({}, None),
    ],
    ids=["brains-py", "skynet", "nested-tensor", "none-recorded", "no-key", "no-info"],
)
def test_amplification_read_from_an_info_dict(
    checkpoint: dict[str, Any], expected: float | None
) -> None:
    assert recorded_amplification(checkpoint) == expected


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"a": {"amplification": 10}, "b": {"amplification": [28.5]}}, "different amplifications"),
        ({"amplification": [10.0, 20.0]}, "different amplifications"),
        ({"amplification": "default"}, "info.amplification is 'default', not a number"),
        ({"amplification": -5.0}, "not a positive finite number"),
    ],
)
def test_unusable_recorded_amplification(info: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        recorded_amplification({"info": info})


def _with(state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `state` with entries replaced in place (None removes one), new ones appended."""
    out = {k: changes.get(k, v) for k, v in state.items()}
    out |= {k: v for k, v in changes.items() if k not in state}
    return {k: v for k, v in out.items() if v is not None}


GOOD = sequential([7, 4, 1])
BAD_STATES = {
    "input-width": (
        sequential([6, 4, 1]),
        "'0.weight' is 4×6 .* takes 6 inputs, but the 7 electrode voltages give 7",
    ),
    "output-width": (sequential([7, 4, 2]), "the last layer '2.weight' gives 2 outputs"),
    "chain": (
        _with(GOOD, **{"2.weight": np.ones((1, 3))}),
        "'2.weight' is 1×3 .* but '0.weight' give 4",
    ),
    "missing-bias": (_with(GOOD, **{"0.bias": None}), "no '0.bias' right after '0.weight'"),
    "bias-shape": (_with(GOOD, **{"0.bias": np.zeros(3)}), "'0.bias' has shape \\(3,\\)"),
    "non-finite": (
        _with(GOOD, **{"2.weight": np.array([[1.0, np.nan, 0.0, np.inf]])}),
        "'2.weight' holds 2 NaN or infinite values",
    ),
    "unknown-2d": (
        _with(GOOD, **{"embedding.table": np.ones((3, 3))}),
        "unknown array 'embedding.table' \\(3×3\\)",
    ),
    "batch-norm": (
        {"bn.weight": np.ones(7), "bn.bias": np.zeros(7), "bn.running_mean": np.zeros(7), **GOOD},
        "'bn.weight' \\(7\\) belongs to a normalisation layer",
    ),
    "batch-norm-buffer": (
        {**GOOD, "bn.running_var": np.ones(7)},
        "'bn.running_var' \\(7\\) belongs to a normalisation layer",
    ),
    "conv": ({"0.weight": np.ones((4, 7, 3))}, "not a linear layer's weight"),
    "stray-bias": ({"1.bias": np.zeros(4), **GOOD}, "'1.bias' .* a bias with no '.weight'"),
    "not-numeric": ({"0.weight": np.array([["a"] * 7])}, "'0.weight' is not numeric"),
    "empty": ({"info": {"amplification": 10}}, "no linear layers found"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_bad_state_dicts_are_refused_naming_the_key(case: str) -> None:
    state, message = BAD_STATES[case]
    with pytest.raises(ConfigError, match=f"^checkpoint: .*{message}"):
        network_arrays(state)


def test_write_npz_writes_the_path_given_with_its_meta(tmp_path: Path) -> None:
    arrays = network_arrays(GOOD)
    write_npz(tmp_path / "net.weights", arrays, {"amplification": None})
    assert [p.name for p in tmp_path.iterdir()] == ["net.weights"]  # no .npz appended, no temp
    with np.load(tmp_path / "net.weights", allow_pickle=False) as npz:
        assert json.loads(str(npz["meta"])) == {"amplification": None}
        np.testing.assert_array_equal(npz["weight_1"], arrays["weight_1"])


# -- the command: hil surrogate-convert CHECKPOINT OUT.npz -----------------------------------------


@pytest.fixture
def fake_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A brains-py-like checkpoint in an .npz (torch is not needed): load_checkpoint reads it
    and puts the state dict under model_state_dict, with an info dict recording 28.5."""

    def load(path: Path) -> Mapping[str, Any]:
        with np.load(path) as npz:
            state = {key: npz[key] for key in npz.files}
        info = {"electrode_info": {"output_electrodes": {"amplification": [28.5]}}}
        return {"info": info, "model_state_dict": state}

    monkeypatch.setattr(surrogates, "load_checkpoint", load)
    path = tmp_path / "model.pt"
    with path.open("wb") as f:
        np.savez(f, **sequential([7, 6, 6, 1], seed=4))
    return path


def _station_device(out: Path, weights_scale: float) -> DNPUDevice:
    return DNPUDevice(DNPUDevice.Settings(weights_file=out, weights_scale=weights_scale))


def test_cli_converts_and_says_what_the_station_needs(fake_checkpoint: Path) -> None:
    out = fake_checkpoint.with_name("mine.npz")
    result = runner.invoke(app, ["surrogate-convert", str(fake_checkpoint), str(out)])
    assert result.exit_code == 0, result.output
    assert "7 → 6 → 6 → 1 (weight_0 6×7, weight_1 6×6, weight_2 1×6)" in result.stdout
    assert f"weights_file: {out.resolve()}" in result.stdout
    assert "weights_scale: 28.5" in result.stdout
    assert "from the checkpoint's info" in result.stdout
    with np.load(out) as npz:
        meta = json.loads(str(npz["meta"]))
        weight = npz["weight_2"]
    assert meta["source"] == str(fake_checkpoint)
    assert meta["source_sha256"] == hashlib.sha256(fake_checkpoint.read_bytes()).hexdigest()
    assert meta["amplification"] == 28.5
    assert meta["amplification_in_weights"] is False
    assert meta["converted"].endswith("+00:00")
    state = sequential([7, 6, 6, 1], seed=4)
    np.testing.assert_array_equal(weight, state["4.weight"])  # not baked in
    device = _station_device(out, 28.5)
    theta, x, v = voltages(device, 20)
    np.testing.assert_allclose(
        device.true_output(theta, x)[:, 0], 28.5 * forward(state, v), rtol=1e-12
    )


def test_cli_amplification_given_and_baked(fake_checkpoint: Path) -> None:
    plain, baked = fake_checkpoint.with_name("plain.npz"), fake_checkpoint.with_name("baked.npz")
    given = ["--amplification", "50"]
    result = runner.invoke(app, ["surrogate-convert", str(fake_checkpoint), str(plain), *given])
    assert result.exit_code == 0, result.output
    assert (
        "weights_scale: 50   # nA per network unit: the amplification (from --amplification)"
        in (result.stdout)
    )
    args = ["surrogate-convert", str(fake_checkpoint), str(baked), *given, "--bake"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "weights_scale: 1.0   # amplification 50 baked in" in result.stdout
    with np.load(baked) as npz:
        assert json.loads(str(npz["meta"]))["amplification_in_weights"] is True
    a, b = _station_device(plain, 50.0), _station_device(baked, 1.0)
    theta, x, _ = voltages(a, 20)
    np.testing.assert_allclose(a.true_output(theta, x), b.true_output(theta, x), rtol=1e-12)


def test_cli_without_an_amplification_says_to_set_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(surrogates, "load_checkpoint", lambda path: dict(GOOD))
    (tmp_path / "net.pt").write_bytes(b"x")
    out = tmp_path / "net.npz"
    result = runner.invoke(app, ["surrogate-convert", str(tmp_path / "net.pt"), str(out)])
    assert result.exit_code == 0, result.output
    assert "weights_scale" not in result.stdout
    assert "no amplification recorded or given: set weights_scale" in result.stderr
    result = runner.invoke(app, ["surrogate-convert", str(tmp_path / "net.pt"), str(out), "--bake"])
    assert result.exit_code == 2
    assert "--bake: no amplification is recorded in the checkpoint" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.pt", "out.npz"], "checkpoint 'missing.pt' does not exist"),
        (["model.pt", "model.pt"], "would overwrite the checkpoint"),
        (["model.pt", "nowhere/out.npz"], "folder 'nowhere' does not exist"),
        (["model.pt", "out.npz", "--amplification", "0"], "--amplification 0: give a positive"),
    ],
)
def test_cli_refuses_bad_arguments_in_one_line(
    fake_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(fake_checkpoint.parent)
    result = runner.invoke(app, ["surrogate-convert", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (fake_checkpoint.parent / "out.npz").exists()


def test_cli_refuses_a_bad_network_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(surrogates, "load_checkpoint", lambda path: BAD_STATES["missing-bias"][0])
    (tmp_path / "net.pt").write_bytes(b"x")
    result = runner.invoke(app, ["surrogate-convert", str(tmp_path / "net.pt"), "out.npz"])
    assert result.exit_code == 2
    assert "no '0.bias' right after '0.weight'" in result.stderr


def test_without_torch_the_message_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    (tmp_path / "net.pt").write_bytes(b"x")
    with pytest.raises(HilError, match=r"pip install 'hil\[surrogate\]'"):
        load_checkpoint(tmp_path / "net.pt")
    result = runner.invoke(app, ["surrogate-convert", str(tmp_path / "net.pt"), "out.npz"])
    assert result.exit_code == 1
    assert "needs torch, which is not installed: pip install 'hil[surrogate]'" in result.stderr


def test_load_checkpoint_reads_tensors_only_and_refuses_what_is_not_a_state_dict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def load(path: Path, **kwargs: Any) -> Any:
        calls.append(kwargs)
        if path.name == "pickled.pt":
            raise RuntimeError("Weights only load failed")
        return [1, 2] if path.name == "list.pt" else {"0.weight": np.ones((1, 7))}

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
    assert list(load_checkpoint(tmp_path / "model.pt")) == ["0.weight"]
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    with pytest.raises(ConfigError, match=r"holds a list, not a state dict"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(ConfigError, match=r"\(RuntimeError; hil --debug shows torch's message\)"):
        load_checkpoint(tmp_path / "pickled.pt")


def test_a_real_torch_sequential_converts(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(7, 12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 1),
    ).double()
    info = {"electrode_info": {"output_electrodes": {"amplification": [28.5]}}}
    torch.save({"info": info, "model_state_dict": net.state_dict()}, tmp_path / "model.pt")
    done = convert(tmp_path / "model.pt", tmp_path / "model.npz")
    assert (done.shapes, done.weights_scale) == ([(12, 7), (12, 12), (1, 12)], 28.5)
    device = _station_device(tmp_path / "model.npz", 28.5)
    theta, x, v = voltages(device, 20)
    with torch.no_grad():
        expected = 28.5 * net(torch.from_numpy(v)).numpy()[:, 0]
    np.testing.assert_allclose(device.true_output(theta, x)[:, 0], expected, rtol=1e-10)
