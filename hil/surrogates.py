"""Surrogates from elsewhere: a lab's own DNPU surrogate network, trained in PyTorch (SkyNEt,
brains-py or any `nn.Sequential` of `nn.Linear` layers), converted to the .npz that the DNPU
simulator reads as its `weights_file` (arrays weight_j, out × in, and bias_j; docs/simulators.md).

What is read from a checkpoint:
- the state dict, at the top or nested under `state_dict`, `model_state_dict` or `model`;
- its linear layers in state-dict order: each `<name>.weight` (2-D) followed by `<name>.bias`;
  together they must chain 7 electrode voltages → … → 1 current;
- entries that are not arrays (an `info` dict, strings, numbers, None) are training metadata and
  are ignored; every other array (batch-norm buffers, a 1-D normalisation weight, an unknown
  matrix) is refused, since the DNPU computes linear layers with an activation between them and
  would silently compute a different network;
- an `amplification` recorded anywhere in an `info` or `info_dict` dict (SkyNEt keeps `info` in
  the state dict, brains-py beside it). Such networks learn the measured current divided by that
  amplification: it is the `weights_scale` (nA per network unit) that gives back nA.

torch is optional (`pip install 'hil[surrogate]'`) and imported only to read a checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hil.core import ConfigError, FloatArray, HilError
from hil.core.paths import check_regular_file

N_INPUTS = 7
"""The DNPU's electrodes: a surrogate maps their voltages to one current."""
CHECKPOINT_LIMIT = 4 << 30
"""Largest checkpoint read: 4 GiB (a surrogate is kB to MB; optimizer state may add more)."""
NESTING_KEYS = ("state_dict", "model_state_dict", "model")
INFO_KEYS = ("info", "info_dict")
NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Conversion:
    """What `convert` wrote, and what the station file needs to use it."""

    out: Path
    shapes: list[tuple[int, int]]
    """(out, in) of weight_0, weight_1, …"""
    amplification: float | None
    """The amplification used: given, else recorded in the checkpoint, else None."""
    origin: str | None
    """Where the amplification came from: "--amplification", "the checkpoint's info" or None."""
    baked: bool
    """Whether the amplification was multiplied into the last layer."""

    @property
    def weights_scale(self) -> float | None:
        """The station's weights_scale: 1 once baked, the amplification, or None (unknown)."""
        return 1.0 if self.baked else self.amplification


def network_arrays(state: Mapping[str, Any]) -> dict[str, FloatArray]:
    """The linear layers of a state dict (or a checkpoint nesting one) as weight_j / bias_j
    float64 arrays, checked to chain 7 inputs → … → 1 output with finite values."""
    entries = _arrays(_levels(state)[-1][1])
    layers: list[tuple[str, FloatArray, str, FloatArray]] = []
    while entries:
        key, weight = entries.pop(0)
        prefix = _prefix(key, "weight")
        if prefix is None or weight.ndim != 2:
            raise ConfigError(_unexpected(key, weight))
        bias_key = f"{prefix}bias"
        if not entries or entries[0][0] != bias_key:
            raise ConfigError(
                f"checkpoint: no {bias_key!r} right after {key!r}; the DNPU reads a bias per "
                "layer (a layer built with bias=False needs a zero bias added before converting)"
            )
        layers.append((key, weight, bias_key, entries.pop(0)[1]))
    if not layers:
        raise ConfigError(
            "checkpoint: no linear layers found (keys '<name>.weight' with a 2-D array, each "
            "followed by '<name>.bias'); is it the surrogate's state dict?"
        )
    _check_chain(layers)
    arrays: dict[str, FloatArray] = {}
    for j, (_, weight, _, bias) in enumerate(layers):
        arrays[f"weight_{j}"] = weight
        arrays[f"bias_{j}"] = bias
    return arrays


def recorded_amplification(checkpoint: Mapping[str, Any]) -> float | None:
    """The amplification recorded in the checkpoint's info dicts (SkyNEt, brains-py), or None;
    different recorded values are an error (say which applies with --amplification)."""
    found: dict[str, float] = {}
    infos = [
        (f"{where}{key}", state[key])
        for where, state in _levels(checkpoint)
        for key in INFO_KEYS
        if isinstance(state.get(key), Mapping)
    ]
    for where, info in infos:
        for path, value in _find(info, "amplification", where):
            if value is None:
                continue
            numbers = _numbers(value)
            if numbers is None or numbers.size == 0:
                raise ConfigError(
                    f"checkpoint: {path} is {value!r}, not a number; give the amplification "
                    "with --amplification"
                )
            for number in np.unique(numbers):
                found[f"{path} = {float(number):g}"] = float(number)
    values = set(found.values())
    if len(values) > 1:
        raise ConfigError(
            f"checkpoint records different amplifications ({'; '.join(found)}); say which "
            "applies to this network with --amplification"
        )
    if not values:
        return None
    value = values.pop()
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"checkpoint: recorded amplification {value:g} is not a positive finite number; "
            "give the amplification with --amplification"
        )
    return value


def load_checkpoint(path: Path) -> Mapping[str, Any]:
    """A PyTorch checkpoint, read with `torch.load(weights_only=True)` (tensors and plain
    containers only: loading runs no code from the file)."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        raise HilError(
            "reading a PyTorch checkpoint needs torch, which is not installed: "
            "pip install 'hil[surrogate]'"
        ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds: unpickling, zip, runtime
        raise ConfigError(
            f"checkpoint '{path}' cannot be read by torch.load(weights_only=True) "
            f"({type(exc).__name__}; hil --debug shows torch's message): it must be a torch.save "
            "file of tensors and plain containers, e.g. torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(loaded, Mapping):
        raise ConfigError(
            f"checkpoint '{path}' holds a {type(loaded).__name__}, not a state dict; save the "
            "network's tensors: torch.save(model.state_dict(), path)"
        )
    return loaded


def write_npz(path: Path, arrays: Mapping[str, FloatArray], meta: dict[str, Any]) -> None:
    """The .npz the DNPU reads (`arrays`) plus `meta` as a JSON string, written to `path`
    exactly (no .npz appended) and whole (a temporary file renamed into place)."""
    contents: dict[str, Any] = {**arrays, "meta": np.array(json.dumps(meta))}
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("wb") as f:
            np.savez(f, **contents)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def convert(
    checkpoint: Path, out: Path, *, amplification: float | None = None, bake: bool = False
) -> Conversion:
    """Read `checkpoint`, write its network to `out` with the provenance in `meta`.

    The amplification (given, else recorded) is kept out of the weights, so the file holds the
    network as trained and the station says the scale (weights_scale); `bake` multiplies it into
    the last layer instead (weights_scale 1)."""
    if amplification is not None and not (math.isfinite(amplification) and amplification > 0):
        raise ConfigError(f"--amplification {amplification:g}: give a positive finite number")
    check_regular_file(checkpoint, limit=CHECKPOINT_LIMIT, what="checkpoint")
    if out.resolve() == checkpoint.resolve():
        raise ConfigError(f"{out}: the output would overwrite the checkpoint; name another file")
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: folder '{out.parent}' does not exist; create it first")
    loaded = load_checkpoint(checkpoint)
    arrays = network_arrays(loaded)
    origin = None if amplification is None else "--amplification"
    if amplification is None:
        amplification = recorded_amplification(loaded)
        origin = None if amplification is None else "the checkpoint's info"
    if bake:
        if amplification is None:
            raise ConfigError(
                "--bake: no amplification is recorded in the checkpoint; give it with "
                "--amplification"
            )
        last = len(arrays) // 2 - 1
        arrays[f"weight_{last}"] = arrays[f"weight_{last}"] * amplification
        arrays[f"bias_{last}"] = arrays[f"bias_{last}"] * amplification
    shapes = [arrays[f"weight_{j}"].shape for j in range(len(arrays) // 2)]
    meta = {
        "source": str(checkpoint),
        "source_sha256": _sha256(checkpoint),
        "amplification": amplification,
        "amplification_from": origin,
        "amplification_in_weights": bake,
        "layers": "-".join(str(n) for n in [N_INPUTS, *(s[0] for s in shapes)])
        + ", activation not recorded in a state dict (the DNPU default for a file: relu)",
        "converted": datetime.now(UTC).isoformat(timespec="seconds"),
        "converter": "hil surrogate-convert",
    }
    write_npz(out, arrays, meta)
    return Conversion(
        out=out,
        shapes=[(s[0], s[1]) for s in shapes],
        amplification=amplification,
        origin=origin,
        baked=bake,
    )


def _levels(checkpoint: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The checkpoint and the state dicts nested in it (at most three deep), each with its
    path; the last is the state dict."""
    levels: list[tuple[str, Mapping[str, Any]]] = [("", checkpoint)]
    for _ in range(3):
        where, state = levels[-1]
        key = next((k for k in NESTING_KEYS if isinstance(state.get(k), Mapping)), None)
        if key is None:
            break
        levels.append((f"{where}{key}.", state[key]))
    return levels


def _find(tree: Mapping[str, Any], name: str, where: str) -> Iterator[tuple[str, Any]]:
    """Every value under key `name` in nested mappings (at most eight levels), with its path."""
    stack: list[tuple[str, Mapping[str, Any], int]] = [(where, tree, 0)]
    while stack:
        path, node, depth = stack.pop()
        for key, value in node.items():
            if key == name:
                yield f"{path}.{key}", value
            elif isinstance(value, Mapping) and depth < 8:
                stack.append((f"{path}.{key}", value, depth + 1))


def _numbers(value: Any) -> FloatArray | None:
    """A number, a list of numbers, an array or a tensor as a flat float array; None if not."""
    if isinstance(value, bool | str | bytes):
        return None
    array = _as_numpy(value)
    try:
        return np.asarray(value if array is None else array, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None


def _as_numpy(value: Any) -> np.ndarray[Any, Any] | None:
    """A numpy array or a tensor-like (`.detach().cpu().numpy()` or `.numpy()`) as numpy; None
    for anything else (metadata)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    if callable(getattr(value, "numpy", None)):
        return np.asarray(value.numpy())
    return None


def _arrays(state: Mapping[str, Any]) -> list[tuple[str, FloatArray]]:
    """The state dict's array entries, in order, as float64; non-arrays are metadata, skipped."""
    out = []
    for key, value in state.items():
        array = _as_numpy(value)
        if array is None:
            continue
        try:
            out.append((str(key), np.asarray(array, dtype=np.float64)))
        except (TypeError, ValueError):
            raise ConfigError(f"checkpoint: {key!r} is not numeric ({array.dtype})") from None
    return out


def _prefix(key: str, suffix: str) -> str | None:
    """'0.' of '0.weight' ('' of a bare Linear's 'weight'); None if `key` is not a `suffix`."""
    if key == suffix:
        return ""
    if key.endswith(f".{suffix}"):
        return key[: -len(suffix)]
    return None


def _unexpected(key: str, array: FloatArray) -> str:
    """Why an array that is not the next linear layer's weight is refused."""
    shape = "×".join(map(str, array.shape)) or "scalar"
    if _prefix(key, "weight") is not None and array.ndim != 1:
        return f"checkpoint: {key!r} ({shape}) is not a linear layer's weight (out × in)"
    if key.rsplit(".", 1)[-1] in NORM_BUFFERS or _prefix(key, "weight") is not None:
        return (
            f"checkpoint: {key!r} ({shape}) belongs to a normalisation layer; the DNPU computes "
            "linear layers with an activation between them: fold the normalisation into the "
            "neighbouring linear layer before converting"
        )
    if _prefix(key, "bias") is not None:
        return f"checkpoint: {key!r} ({shape}) is a bias with no '.weight' of its own before it"
    return (
        f"checkpoint: unknown array {key!r} ({shape}); only linear layers ('<name>.weight' out × "
        "in, then '<name>.bias') make a DNPU surrogate"
    )


def _check_chain(layers: list[tuple[str, FloatArray, str, FloatArray]]) -> None:
    """7 inputs → … → 1 output, each bias as long as its layer's output, no NaN or inf."""
    previous: tuple[str, int] = ("the 7 electrode voltages", N_INPUTS)
    for key, weight, bias_key, bias in layers:
        n_out, n_in = weight.shape
        if n_in != previous[1]:
            raise ConfigError(
                f"checkpoint: {key!r} is {n_out}×{n_in} (out × in), so it takes {n_in} inputs, "
                f"but {previous[0]} give {previous[1]}; a DNPU surrogate maps {N_INPUTS} "
                "electrode voltages through a chain of linear layers to 1 current"
            )
        if bias.shape != (n_out,):
            raise ConfigError(
                f"checkpoint: {bias_key!r} has shape {bias.shape}, but {key!r} has {n_out} "
                f"outputs; expected ({n_out},)"
            )
        for name, array in ((key, weight), (bias_key, bias)):
            bad = int(np.count_nonzero(~np.isfinite(array)))
            if bad:
                raise ConfigError(
                    f"checkpoint: {name!r} holds {bad} NaN or infinite values; the network "
                    "cannot be used"
                )
        previous = (repr(key), n_out)
    key, weight = layers[-1][0], layers[-1][1]
    if weight.shape[0] != 1:
        raise ConfigError(
            f"checkpoint: the last layer {key!r} gives {weight.shape[0]} outputs; a DNPU "
            "surrogate gives 1 (the output current)"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
