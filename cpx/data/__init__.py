"""Data: competition profiles, image and mask files, data-folder checks, the dataset cache
and the train/validation split.

Every image and mask cpx reads goes through ``cpx.data.images``, so training, validation,
prediction, scoring and submission checks apply one set of rules.

May import: ``cpx.kernel``.
"""
