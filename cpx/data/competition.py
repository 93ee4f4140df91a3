"""What cpx knows about a competition: a profile that a competition plugin registers.

Nothing in the core names a particular challenge; every class list, limit and rule comes
from one of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

# (image RGB uint8 H x W x 3, mask uint8 H x W) pairs from a procedural generator
Synthesizer = Callable[[int, int, int], Iterator[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Layout:
    """Where a competition's files live, relative to its data folder."""

    train_images: str = "train/images"
    train_masks: str = "train/masks"
    test_images: str = "test/images"
    image_suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png")
    mask_suffix: str = ".png"


@dataclass(frozen=True)
class SubmissionFormat:
    """What the scorer accepts inside the submission zip."""

    masks_dir: str = "masks"
    mask_modes: tuple[str, ...] = ("P", "L")
    solution_dir: Optional[str] = "solution"
    weights_file: str = "ckpt.pth"
    weights_key: str = "state_dict"
    runner: str = "run.py"


@dataclass(frozen=True)
class Rules:
    """What the organisers allow: ensembles, pretrained weights, external data, the number of
    submissions per phase, and whether only the final submission counts.
    """

    ensembles_allowed: bool = True
    pretrained_allowed: bool = True
    external_data_allowed: bool = True
    submissions_per_phase: Optional[int] = None
    only_final_counts: bool = False


@dataclass(frozen=True)
class Competition:
    """A competition profile: classes (ids are positions), palette, left/right pairs a flip must
    swap, image size, parameter limit, metric name, data layout, submission format, rules and
    an optional synthetic-data generator ``synthesize(count, size, seed)``.
    """

    name: str
    classes: tuple[str, ...]
    title: str = ""
    palette: tuple[tuple[int, int, int], ...] = ()
    # class-id pairs that trade places when the image is mirrored left-right
    flip_pairs: tuple[tuple[int, int], ...] = ()
    image_size: int = 512
    # trainable parameters must be strictly fewer than this
    max_params: Optional[int] = None
    metric: str = "fscore"
    layout: Layout = field(default_factory=Layout)
    submission: SubmissionFormat = field(default_factory=SubmissionFormat)
    rules: Rules = field(default_factory=Rules)
    synthesize: Optional[Synthesizer] = None
    url: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def flip_permutation(self) -> list[int]:
        """Channel order that maps logits of a mirrored image back to true classes."""
        perm = list(range(self.num_classes))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def palette_bytes(self) -> list[int]:
        """A 768-value PIL palette, padded with greys past the class list."""
        flat: list[int] = []
        for i in range(256):
            if i < len(self.palette):
                flat.extend(self.palette[i])
            else:
                flat.extend((i, i, i))
        return flat

    def check_params(self, count: int) -> Optional[str]:
        """A message when ``count`` breaks the parameter limit, else None."""
        if self.max_params is not None and count >= self.max_params:
            return (f"the model has {count:,} parameters; {self.name} requires fewer than "
                    f"{self.max_params:,}")
        return None

    def data_path(self, root: Path, part: str) -> Path:
        """``root`` joined with the layout's folder for ``part`` (``train_images``, ``train_masks``,
        ``test_images``).
        """
        return Path(root) / getattr(self.layout, part)
