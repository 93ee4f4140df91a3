"""Built-in post-processors: small connected components and holes of each class.

Both run :mod:`cpx_plugins.postprocess_numpy` with ``scipy.ndimage.label`` as the component
labeller, and declare that file as their standalone source (``cpx_source``), so ``cpx package``
copies it into ``solution/`` and ``run.py`` repeats them with numpy alone, component for
component.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cpx.kernel.hookspecs import hookimpl

from . import postprocess_numpy


class SmallComponentsOptions(BaseModel):
    """Options of ``small-components``."""

    model_config = ConfigDict(extra="forbid")

    min_share: float = Field(1e-4, gt=0, lt=1, description="components covering less than this share of the image "
                                                           "are relabelled from their surroundings (1e-4 = 26 px at "
                                                           "512x512); a class's largest component always stays")
    classes: Optional[list[int]] = Field(None, description="class ids to clean; empty: every class but 0")


class FillHolesOptions(BaseModel):
    """Options of ``fill-holes``."""

    model_config = ConfigDict(extra="forbid")

    max_share: float = Field(1e-4, gt=0, lt=1, description="enclosed regions of other labels up to this share of the "
                                                           "image take the enclosing class")
    classes: Optional[list[int]] = Field(None, description="class ids whose holes to fill; empty: every class but 0")


class NumpyPostprocessor:
    """``mask -> mask`` running one function of :mod:`cpx_plugins.postprocess_numpy` with scipy's
    labeller; ``cpx_source`` names the file, the function and its keyword arguments."""

    def __init__(self, function: str, kwargs: dict[str, Any]):
        self.function = getattr(postprocess_numpy, function)
        self.kwargs = kwargs
        self.cpx_source = (postprocess_numpy.__file__, function, kwargs)

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        from scipy import ndimage  # imported on first use: only post-processing needs scipy

        return self.function(mask, label=ndimage.label, **self.kwargs)

    def __repr__(self) -> str:
        return f"NumpyPostprocessor({self.function.__name__}, {self.kwargs})"


def _small_components(options: SmallComponentsOptions, competition: Any) -> NumpyPostprocessor:
    return NumpyPostprocessor("remove_small_components", options.model_dump())


def _fill_holes(options: FillHolesOptions, competition: Any) -> NumpyPostprocessor:
    return NumpyPostprocessor("fill_holes", options.model_dump())


@hookimpl
def register_postprocessors(register):
    register("small-components", _small_components, options=SmallComponentsOptions,
             description="relabel connected components smaller than min_share of the image from their surroundings")
    register("fill-holes", _fill_holes, options=FillHolesOptions,
             description="fill holes (enclosed regions up to max_share of the image) of each class")
