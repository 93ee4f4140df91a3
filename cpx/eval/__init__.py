"""Evaluation: the competition metrics, prediction with test-time augmentation (TTA),
validation of a run or a folder of masks, and ensembles of runs.

May import: ``cpx.kernel``, ``cpx.data``, ``cpx.runs``.
"""
