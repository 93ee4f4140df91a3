"""Data: competition profiles, image and mask files, data-folder checks, the dataset cache
and the train/validation split.

Every image and mask cpx reads goes through ``cpx.data.images``, so training, validation,
prediction, scoring and submission checks apply one set of rules.

May import: ``cpx.kernel``.
"""

from cpx.data.checks import DataReport, check_dataset
from cpx.data.competition import Competition
from cpx.data.dataset import fingerprint, load_dataset, load_images, split_names
from cpx.data.images import BadFile, read_mask, read_rgb, write_image, write_mask
from cpx.data.layout import SYNTH_PREFIX, Scan, scan, test_image_paths, train_names, write_dataset

__all__ = ["BadFile", "Competition", "DataReport", "SYNTH_PREFIX", "Scan", "check_dataset", "fingerprint",
           "load_dataset", "load_images", "read_mask", "read_rgb", "scan", "split_names", "test_image_paths",
           "train_names", "write_dataset", "write_image", "write_mask"]
