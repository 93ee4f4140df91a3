"""Data: competition profiles, image and mask files, data-folder checks, the dataset cache
and the train/validation split.

Every image and mask cpx reads goes through ``cpx.data.images``, and every data folder is
listed by ``cpx.data.layout.scan``, so training, validation, prediction, scoring and submission
checks apply one set of rules to one set of files.

May import: ``cpx.kernel``.
"""

from cpx.data.checks import DataReport, check_dataset
from cpx.data.competition import Competition
from cpx.data.dataset import fingerprint, load_dataset, load_images, split_names
from cpx.data.images import BadFile, image_size, read_image, read_mask, read_rgb, write_image, write_mask
from cpx.data.layout import (
    LABELLED_PARTS,
    SYNTH_PREFIX,
    TEST_PARTS,
    TRAIN_PARTS,
    VAL_PARTS,
    Scan,
    scan,
    scan_images,
    test_image_paths,
    train_names,
    write_dataset,
)

__all__ = ["BadFile", "Competition", "DataReport", "LABELLED_PARTS", "SYNTH_PREFIX", "Scan", "TEST_PARTS",
           "TRAIN_PARTS", "VAL_PARTS", "check_dataset", "fingerprint", "image_size", "load_dataset", "load_images",
           "read_image", "read_mask", "read_rgb", "scan", "scan_images", "split_names", "test_image_paths",
           "train_names", "write_dataset", "write_image", "write_mask"]
