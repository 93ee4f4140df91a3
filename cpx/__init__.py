"""cpx: a toolkit for image-segmentation challenges hosted on Codabench."""

__version__ = "0.1.0"
