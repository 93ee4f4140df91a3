"""Post-processing steps chosen on the command line (``--post NAME[,NAME]``): parsed, built from
the post-processor plugins (``register_postprocessors``) and applied to class-id masks.

A spec is a comma-separated list of registered names, each optionally followed by options as
``:key=value`` (values read as YAML), e.g. ``small-components:min_share=0.001,fill-holes``.
Steps run in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import yaml

from cpx.kernel.errors import ConfigError

PostSpec = Union[None, str, Sequence[str]]


@dataclass
class PostStep:
    """One post-processor: its registered name, validated options and the ``mask -> mask``
    callable (H x W uint8 numpy arrays)."""

    name: str
    options: dict
    fn: Callable[[np.ndarray], np.ndarray]

    @property
    def source(self) -> Optional[tuple]:
        """``(file, function, kwargs)`` reproducing the step without cpx, or None."""
        return getattr(self.fn, "cpx_source", None)

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        return self.fn(mask)


def _split(text: str) -> list[str]:
    """Split on commas outside brackets, so ``classes=[1,2]`` stays one value."""
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [i.strip() for i in items if i.strip()]


def parse_post(spec: PostSpec) -> list[tuple[str, dict[str, Any]]]:
    """``"a:k=1,b"`` (or a list of such texts) -> ``[("a", {"k": 1}), ("b", {})]``; None, ``""``
    and ``"none"`` -> ``[]``.

    :raises ConfigError: an option without ``=``.
    """
    if spec is None:
        return []
    texts = [spec] if isinstance(spec, str) else list(spec)
    out = []
    for item in (i for text in texts for i in _split(text)):
        if item.lower() == "none":
            continue
        name, *options = item.split(":")
        values: dict[str, Any] = {}
        for option in options:
            key, sep, raw = option.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--post {item!r}: options go as NAME:key=value, got {option!r}")
            try:
                values[key.strip()] = yaml.safe_load(raw)
            except yaml.YAMLError:
                values[key.strip()] = raw
        out.append((name.strip(), values))
    return out


def create_post(spec: PostSpec, host, competition) -> list[PostStep]:
    """The post-processing steps of ``spec`` built with ``host``'s registered post-processors.

    :raises UnknownComponent: a name no plugin registered (close names suggested).
    :raises ConfigError: options that do not validate, one line per field.
    """
    steps = []
    for name, values in parse_post(spec):
        entry = host.postprocessors.get(name)
        options = entry.parse_options(values, where=f"--post {name}")
        steps.append(PostStep(name, options.model_dump(mode="json"), entry.create(options, competition)))
    return steps


def post_label(steps: Sequence[PostStep]) -> str:
    """``small-components:min_share=0.0001,fill-holes:max_share=0.0001``: each step's name with
    every option that is set; ``none`` for no steps."""
    if not steps:
        return "none"
    return ",".join(s.name + "".join(f":{k}={v}" for k, v in s.options.items() if v is not None) for s in steps)


def apply_post(steps: Sequence[PostStep], mask: torch.Tensor) -> torch.Tensor:
    """An H x W uint8 class-id tensor through every step, in order (on the CPU)."""
    if not steps:
        return mask
    arr = mask.cpu().numpy()
    for step in steps:
        arr = step(arr)
    return torch.from_numpy(np.ascontiguousarray(arr))
