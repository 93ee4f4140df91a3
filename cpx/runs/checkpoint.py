"""Reading checkpoints safely, in the shapes people have them.

Every checkpoint cpx reads goes through :func:`read_checkpoint`, which never unpickles code:
``torch.load(..., weights_only=True)`` admits tensors and plain Python values only, so a file
that would run code when unpickled is refused instead. Accepted shapes:

* a dict with the weights under ``state_dict`` (what cpx writes), ``model_state_dict`` (older
  training scripts) or ``model``;
* a bare state_dict (``torch.save(model.state_dict(), path)``);
* keys prefixed by ``module.`` (DataParallel / DistributedDataParallel) or ``_orig_mod.``
  (``torch.compile``): the prefix is stripped.

A whole pickled model (``torch.save(model, path)``) is refused with how to save weights instead.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cpx.kernel.errors import RunError

# Keys other scripts keep the weights under, tried in this order (a competition's own key first,
# where it names one: see accepted_weight_keys).
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def accepted_weight_keys(expected: str) -> tuple[str, ...]:
    """The keys a weights file may keep its state_dict under, ``expected`` (the competition's
    solution format's ``weights_key``) first, then :data:`WEIGHT_KEYS`. A packaged
    ``solution/run.py`` reads this list from its model.json, as it runs without cpx."""
    return tuple(dict.fromkeys((expected, *WEIGHT_KEYS)))


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found: ``weights`` (name -> tensor, prefixes stripped),
    the key they were under (``""`` for a bare state_dict), the prefixes stripped, and the
    rest of the file's top-level mapping (epoch, config, ... ; empty for a bare state_dict)."""

    path: Path
    weights: dict[str, torch.Tensor]
    key: str
    stripped: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def load_file(path: os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with one-line errors.

    :raises RunError: the file is missing or unreadable, or unpickling it would need more than
        tensors and plain values (a whole pickled model, or a file that would run code).
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: {what} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the Python object it refused ("GLOBAL torch.nn...Linear", "GLOBAL posix.system")
        if "GLOBAL" in str(exc):
            raise RunError(
                f"{path}: refused: it holds pickled Python objects (a whole model saved with "
                "torch.save(model), or code), which cpx never unpickles; save the weights instead: "
                "torch.save({'state_dict': model.state_dict()}, path)") from None
        raise RunError(f"{path}: cannot read the {what}: not a PyTorch checkpoint of tensors") from None
    except OSError as exc:
        raise RunError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except Exception:  # torch's unpickler fails on random bytes with whatever it meets (KeyError, ...)
        raise RunError(f"{path}: cannot read the {what}: not a PyTorch checkpoint of tensors") from None


def _first_line(text: str) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line[:200]


def _is_state_dict(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def strip_wrapper_prefixes(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove ``module.`` / ``_orig_mod.`` when every key carries it (repeatedly, so a compiled
    DDP model's ``module._orig_mod.`` goes too); returns the weights and the prefixes removed."""
    stripped: list[str] = []
    changed = True
    while changed and weights:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in weights):
                weights = {k[len(prefix):]: v for k, v in weights.items()}
                stripped.append(prefix)
                changed = True
    return weights, stripped


def read_checkpoint(path: os.PathLike) -> Checkpoint:
    """The weights in the checkpoint at ``path``, in any of the accepted shapes (module doc).

    :raises RunError: unreadable or unsafe file, or no weights found (naming the keys seen).
    """
    path = Path(path)
    data = load_file(path)
    if _is_state_dict(data):
        weights, stripped = strip_wrapper_prefixes(dict(data))
        return Checkpoint(path, weights, "", stripped)
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a mapping of weights, found {type(data).__name__}")
    for key in WEIGHT_KEYS:
        if _is_state_dict(data.get(key)):
            weights, stripped = strip_wrapper_prefixes(dict(data[key]))
            extra = {k: v for k, v in data.items() if k != key}
            return Checkpoint(path, weights, key, stripped, extra)
    keys = ", ".join(sorted(str(k) for k in data)[:8]) or "none"
    raise RunError(f"{path}: no weights under {', '.join(WEIGHT_KEYS)} and not a bare state_dict "
                   f"(top-level keys: {keys})")


def load_weights(model: torch.nn.Module, checkpoint: Checkpoint, label: str = "the model") -> torch.nn.Module:
    """Load ``checkpoint.weights`` into ``model`` strictly.

    :raises RunError: keys or shapes differ; the message counts missing, unexpected and
        mis-shaped keys with a few examples of each.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in checkpoint.weights]
    unexpected = [k for k in checkpoint.weights if k not in own]
    shapes = [f"{k} {tuple(checkpoint.weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in checkpoint.weights and tuple(checkpoint.weights[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        for what, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
            if items:
                parts.append(f"{len(items)} {what} (e.g. {', '.join(items[:3])})")
        raise RunError(f"{checkpoint.path}: weights do not fit {label}: " + "; ".join(parts))
    model.load_state_dict(checkpoint.weights)
    return model
