"""``masks-tiff``: ``<folder>/<stem>.tif`` (or ``.tiff``), one single-band TIFF mask per image,
for challenges whose masks come from remote sensing or microscopy tools.

Masks are written with tifffile (zlib-compressed, one band), each class id as its stored value
(``masks.values``): uint8, or uint16 when a stored value is over 255. Reading refuses another
container under the TIFF suffix, several bands, non-integer samples and a mask over
:data:`~cpx.submit.zipentries.MAX_MASK_PIXELS` pixels (judged from its header, never decoded).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cpx_plugins.formats._common import folder_path
from cpx_plugins.formats._folder import MaskFolder


class MasksTiffOptions(BaseModel):
    """Options of ``masks-tiff``, written beside ``name`` in the profile's ``submission``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str = Field("masks", description="folder of the zip holding the <stem>.tif masks")
    suffix: Literal[".tif", ".tiff"] = Field(".tif", description="suffix of every mask file, exactly as the "
                                                                 "scorer looks for it (.tif or .tiff)")

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str) -> str:
        return folder_path(value)


class MasksTiff(MaskFolder):
    """``<folder>/<stem>.tif`` masks (see the module docstring)."""

    name = "masks-tiff"
    container = "TIFF"

    def __init__(self, options: MasksTiffOptions, competition):
        super().__init__(options, competition)
        self.suffix = options.suffix

    def describe(self) -> str:
        return (f"{self.folder}/<stem>{self.suffix}: one single-band TIFF mask per image (uint8, uint16 above 255), "
                f"{self.values_phrase()}")
