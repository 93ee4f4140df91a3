"""Data: competition profiles, image and mask files, data-folder checks, the dataset cache
and the train/validation split.

Every image and mask cpx reads goes through ``cpx.data.images``, and every data folder is
listed by ``cpx.data.layout.scan``, so training, validation, prediction, scoring and submission
checks apply one set of rules to one set of files.

May import: ``cpx.kernel``.
"""

from cpx.kernel.lazy import lazy_exports

# imported on first use: the dataset cache needs torch, and a command that only reads a
# competition profile should not wait for it
_EXPORTS = {
    "checks": ("DataReport", "check_dataset"),
    "competition": ("Competition",),
    "dataset": ("fingerprint", "load_dataset", "load_images", "split_names"),
    "images": ("BadFile", "image_size", "read_image", "read_mask", "read_rgb", "write_image", "write_mask"),
    "layout": ("LABELLED_PARTS", "SYNTH_PREFIX", "TEST_PARTS", "TRAIN_PARTS", "VAL_PARTS", "Scan", "scan",
               "scan_images", "test_image_paths", "train_names", "write_dataset"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
