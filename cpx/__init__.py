"""cpx: a toolkit for image-segmentation challenges hosted on Codabench.

The public API, for notebooks and scripts, does the whole day through the same core the ``cpx``
command line calls (the same runs, validations and submissions in the same ledger)::

    import cpx

    run = cpx.train("msf-lmsa", epochs=30, data="data/", log_to="mlflow:sqlite:///mlruns.db")
    run.best_val_score, run.history                                     # as `cpx train` records them
    evaluation = run.validate(tta="flip")                               # `cpx validate RUN --tta flip`
    calibration = run.calibrate()                                       # `cpx calibrate RUN`
    submission = cpx.package(run, "v1", tta="flip")                     # `cpx package RUN --name v1`
    cpx.leaderboard()                                                   # `cpx leaderboard`, as plain rows

    model = cpx.create_model("msf-lmsa", competition="celebamask-mini", dropout=0.1)  # an nn.Module
    run = cpx.open_run("20261124-130501-msf-lmsa-3f2a")                 # or a name / id prefix
    net = run.load_model("best")                                        # weights loaded, eval mode
    masks = cpx.predict(run, ["face.jpg"], tta="flip")                  # H x W uint8 class ids
    result = cpx.score("predictions/", "ground_truth/")                 # the competition's metric
    result.scores.score, result.scores.metric                           # e.g. 0.7525, "fscore"

``cpx.train`` is also the package of the training code (``cpx.train.loop``, ...): calling it
trains (:func:`cpx.api.train`). Runs are looked up in the current workspace (the folder
holding ``cpx.yaml`` or ``experiments/ledger.db``, from the working directory upwards) unless a
workspace is given. Where a competition is not named, it is the one the command line would
take: the workspace's ``cpx.yaml`` (``competition:``), the only one registered, or the one the
ledger's runs share. Errors are :class:`cpx.kernel.errors.CpxError` subclasses with a one-line
message. Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

import os
import types
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

# Read by the OpenMP runtime when torch loads, so set before any cpx module imports torch (a
# choice in the environment wins). Threads that finish their share of an operation sleep
# instead of spinning: on a machine whose cores other programs also use, spinning threads
# keep those cores busy while the thread they wait for is descheduled, and a 2-thread training
# step ran 10-18x slower than with this (measured with benchmarks/cpu_step.py when this line
# came in, commit c150c50; benchmarks/README.md holds no side-by-side figure for it yet).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["__version__", "Run", "create_model", "leaderboard", "open_run", "package", "predict", "score", "train"]

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cpx.api import Run
    from cpx.eval.validate import FolderScore
    from cpx.runs.handle import RunHandle

# the rest of the notebook API lives in cpx.api, imported on first use
_LAZY = ("Run", "leaderboard", "package")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from cpx import api

        return getattr(api, name)
    raise AttributeError(f"module 'cpx' has no attribute {name!r}")


class _TrainPackage(types.ModuleType):
    """``cpx.train``: the training package, which called trains (a function of that name here
    would be replaced by the package the moment anything imports ``cpx.train.loop``)."""

    def __call__(self, recipe: Optional[str] = None, **options: Any) -> "Run":
        """Train a recipe and record the run: :func:`cpx.api.train`."""
        from cpx.api import train

        return train(recipe, **options)


from cpx import train  # noqa: E402  (its __init__ imports nothing)

train.__class__ = _TrainPackage

ImageLike = Union[str, "os.PathLike[str]", "np.ndarray", "torch.Tensor"]


def _competition(name: Optional[str], workspace: Optional[Union[str, os.PathLike]] = None):
    """The named competition, or the workspace's (as ``--competition`` left out picks it)."""
    from cpx.kernel.manager import get_host
    from cpx.kernel.workspace import Workspace
    from cpx.runs.competition import pick_competition

    host = get_host()
    return host.competition(pick_competition(name, Workspace.current(workspace), host, option="competition="))


def create_model(name: str, num_classes: Optional[int] = None, *, competition: Optional[str] = None,
                 in_channels: Optional[int] = None, **options: Any) -> "torch.nn.Module":
    """A freshly initialised model registered under ``name`` (``cpx plugins`` lists them).

    :param num_classes: output channels; default: the competition's classes.
    :param competition: the competition whose classes and image bands the model is built for;
        default, when ``num_classes`` is not given: the workspace's (``cpx.yaml``, the only one
        registered, or the one the ledger's runs share).
    :param in_channels: image bands; default: the competition's, or 3 when only ``num_classes``
        is given.
    :param options: the model's options (validated by its pydantic ``Options``; unknown ones
        are errors), e.g. ``dropout=0.1``.
    :returns: an ``nn.Module`` mapping float images ``B x in_channels x H x W`` in [0, 1] to
        logits ``B x num_classes x H x W``.
    :raises UnknownComponent: no model or competition of that name (close names are suggested).
    :raises ConfigError: an option that does not validate, a model that takes only 3 bands asked
        for others, or no competition to take ``num_classes`` from.
    """
    from cpx.kernel.errors import ConfigError
    from cpx.kernel.manager import get_host

    entry = get_host().models.get(name)
    comp = _competition(competition) if competition is not None or num_classes is None else None
    classes = int(num_classes) if num_classes is not None else comp.num_classes
    bands = int(in_channels) if in_channels is not None else comp.channels if comp is not None else 3
    extra = {}
    if entry.accepts("in_channels"):
        extra["in_channels"] = bands
    elif bands != 3:
        raise ConfigError(f"create_model: {name} takes 3-band images, not {bands}")
    return entry.create(options, classes, where=f"{name} options", **extra)


def open_run(ref: str, workspace: Optional[Union[str, os.PathLike]] = None) -> "Run":
    """A recorded run by id, unique id prefix or name, as a :class:`cpx.api.Run`.

    The handle has ``config`` (the resolved :class:`~cpx.kernel.config.ExperimentConfig`),
    ``history`` (per-epoch records: ``val_score`` is the competition's metric), ``val_names``,
    ``competition``, ``folder``, ``load_model(checkpoint="best", device="cpu")``, and the next
    steps: ``validate(tta=...)``, ``calibrate()``, ``package(name)``.

    :raises RunError: no such run, an ambiguous prefix, or a run without a readable config.
    """
    from cpx.api import open_run as _open_run

    return _open_run(ref, workspace)


def predict(run: Union[str, "RunHandle"], images: Sequence[ImageLike], *, checkpoint: str = "best",
            tta: Union[str, Sequence[str]] = (), device: str = "auto", precision: str = "auto",
            calibration: bool = True, post: Union[None, str, Sequence[str]] = None, tile: Optional[int] = None,
            workspace: Optional[Union[str, os.PathLike]] = None) -> list["np.ndarray"]:
    """Class-id masks for ``images`` from a recorded run, as ``cpx predict`` makes them.

    :param run: a run id, prefix or name, or a handle from :func:`open_run`.
    :param images: paths of image files (read with the run's competition's bands and pixel
        range), ``H x W x C`` uint8 arrays or ``C x H x W`` uint8 tensors, ``C`` the
        competition's bands (3 for RGB); any sizes (a non-square image is letterboxed, never
        squashed).
    :param tta: test-time augmentation, ``"flip"``, ``"scale"`` or both (``"flip,scale"``);
        a flip swaps left/right classes back.
    :param calibration: apply the logit offsets ``cpx calibrate`` stored with the run.
    :param post: post-processing steps, e.g. ``"small-components,fill-holes"``.
    :param tile: predict in sliding windows of this many pixels of the training canvas.
    :returns: per image an ``H x W`` uint8 array of class ids at the image's own size.
    :raises DataError: an unreadable image or an array of the wrong shape or dtype.
    :raises RunError: the run or its checkpoint cannot be used.
    """
    import numpy as np
    import torch

    from cpx.data.images import BadFile, read_image
    from cpx.eval.predict import predictor_for_run
    from cpx.kernel.errors import DataError
    from cpx.kernel.manager import get_host
    from cpx.kernel.workspace import Workspace

    ref = run if isinstance(run, str) else run.id
    predictor = predictor_for_run(ref, Workspace.current(workspace), get_host(), checkpoint=checkpoint, tta=tta,
                                  device=device, precision=precision, calibration=calibration, post=post, tile=tile)
    comp = predictor.competition
    tensors = []
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            try:
                array, _ = read_image(image, comp.channels, comp.pixel_max)
            except BadFile as bad:
                raise bad.error() from None
            tensors.append(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != comp.channels or image.dtype != np.uint8:
                raise DataError(f"image {i}: expected an H x W x {comp.channels} uint8 array, "
                                f"got {image.dtype} {image.shape}")
            tensors.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        else:
            tensors.append(image)
    return [mask.numpy() for mask in predictor.predict(tensors)]


def score(pred_dir: Union[str, os.PathLike], gt_dir: Union[str, os.PathLike],
          competition: Optional[str] = None) -> "FolderScore":
    """The competition's metric of the masks in ``pred_dir`` against those in ``gt_dir``
    (matched by file stem), as ``cpx score`` computes it.

    :param competition: whose mask files and metric; default: the workspace's (``cpx.yaml``,
        the only one registered, or the one the ledger's runs share).
    :returns: a :class:`~cpx.eval.validate.FolderScore`: ``scores`` (a
        :class:`~cpx.eval.metrics.Scores`: ``score``, the competition's metric on its scale,
        named by ``metric`` and described by ``label``; ``per_class``, the metric's value for
        each class; ``miou`` and ``pixel_acc`` for reference), ``per_image`` (each image's own
        value) and ``problems`` that prevented scoring (then ``scores`` is None).
    :raises DataError: a folder that does not exist or holds no masks.
    :raises ConfigError: no competition named and none to take (several registered).
    """
    from cpx.eval.metrics import create_metric
    from cpx.eval.validate import score_folders
    from cpx.kernel.manager import get_host

    comp = _competition(competition)
    return score_folders(pred_dir, gt_dir, comp, create_metric(comp, get_host()))
