"""``masks-png``: ``<folder>/<stem>.png``, one PNG mask per image, the layout most Codabench
segmentation scorers read.

Masks are written in the profile's ``masks.mode`` (``P`` with the competition's palette, or
``L``), each class id as its stored value (``masks.values``, e.g. 0/255 for a binary
challenge), as 16-bit greyscale when a stored value is over 255. Reading accepts the PNG modes
of the ``modes`` option (what the organisers' scorer opens) and refuses anything else: another
container under a ``.png`` name (a JPEG is lossy and shifts class ids at every edge), several
channels, a mask over :data:`~cpx.submit.zipentries.MAX_MASK_PIXELS` pixels (judged from its
header, never decoded).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cpx.data.masks import MaskCodec
from cpx.kernel.errors import ConfigError
from cpx_plugins.formats._common import folder_path
from cpx_plugins.formats._folder import MaskFolder

# Pillow's names for the one-band integer modes a PNG mask may have (cpx.data.images.MASK_MODES)
MaskMode = Literal["P", "L", "1", "I;16", "I;16B", "I;16L", "I"]


class MasksPngOptions(BaseModel):
    """Options of ``masks-png``, written beside ``name`` in the profile's ``submission``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str = Field("masks", description="folder of the zip holding the <stem>.png masks")
    modes: tuple[MaskMode, ...] = Field(("P", "L"), min_length=1,
                                        description="PNG modes accepted when reading (what the scorer opens); "
                                                    "must include the profile's masks.mode, which cpx writes")

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str) -> str:
        return folder_path(value)


class MasksPng(MaskFolder):
    """``<folder>/<stem>.png`` masks (see the module docstring).

    :raises ConfigError: the mode cpx writes (the profile's ``masks.mode``, or ``I;16`` for
        stored values over 255) is not among ``modes``, named ``submission.modes``.
    """

    name = "masks-png"
    container = "PNG"
    suffix = ".png"

    def __init__(self, options: MasksPngOptions, competition):
        super().__init__(options, competition)
        self.read_modes = tuple(options.modes)
        mode = competition.masks.mode
        if mode not in options.modes:
            raise ConfigError(f"submission.modes: cpx writes masks in mode {mode} (the profile's masks.mode), "
                              f"which modes ({', '.join(options.modes)}) leaves out; add it or change masks.mode")
        ids = np.arange(competition.num_classes, dtype=np.uint8)
        if int(MaskCodec(competition).encode(ids).max()) > 255 and "I;16" not in options.modes:
            raise ConfigError("submission.modes: stored values over 255 (masks.values) are written as 16-bit PNG "
                              f"(mode I;16), which modes ({', '.join(options.modes)}) leaves out; add I;16")

    def describe(self) -> str:
        return (f"{self.folder}/<stem>.png: one PNG mask per image, written in mode {self.competition.masks.mode}, "
                f"{self.values_phrase()}; modes {', '.join(self.read_modes)} accepted")
