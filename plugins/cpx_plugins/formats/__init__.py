"""Built-in submission formats: ``masks-png``, ``masks-tiff``, ``rle-json`` and ``npz``, one
module each (``_folder`` holds what the two mask folders share, ``_common`` what all share).

Each registers its class as the factory (``factory(options, competition)``), so a format
refuses options that do not fit the competition when it is built, with a
:class:`~cpx.kernel.errors.ConfigError` naming ``submission.<field>``.
"""

from cpx.kernel.hookspecs import hookimpl
from cpx_plugins.formats.masks_png import MasksPng, MasksPngOptions
from cpx_plugins.formats.masks_tiff import MasksTiff, MasksTiffOptions
from cpx_plugins.formats.npz import Npz, NpzOptions
from cpx_plugins.formats.rle_json import RleJson, RleJsonOptions


@hookimpl
def register_submission_formats(register):
    register("masks-png", MasksPng, options=MasksPngOptions,
             description="masks/<stem>.png: one PNG mask per image (palette or greyscale)")
    register("masks-tiff", MasksTiff, options=MasksTiffOptions,
             description="masks/<stem>.tif: one single-band TIFF mask per image")
    register("rle-json", RleJson, options=RleJsonOptions,
             description="one JSON object of run-length encoded masks of one class, keyed by image file name")
    register("npz", Npz, options=NpzOptions,
             description="one .npz archive with a 2-D array of class ids per image")
