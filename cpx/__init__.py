"""cpx: a toolkit for image-segmentation challenges hosted on Codabench.

The public API, for notebooks and scripts (the ``cpx`` command line calls the same core)::

    import cpx

    model = cpx.create_model("msf-lmsa", num_classes=19, dropout=0.1)   # an nn.Module
    run = cpx.open_run("20261124-130501-msf-lmsa-3f2a")                 # or a name / id prefix
    run.config, run.history                                             # resolved config, epochs
    net = run.load_model("best")                                        # weights loaded, eval mode
    masks = cpx.predict(run, ["face.jpg"], tta="flip")                  # H x W uint8 class ids
    result = cpx.score("predictions/", "ground_truth/")                 # competition F-score

Runs are looked up in the current workspace (the folder holding ``cpx.yaml`` or
``experiments/ledger.db``, from the working directory upwards) unless a workspace is given.
Errors are :class:`cpx.kernel.errors.CpxError` subclasses with a one-line message.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

# Read by the OpenMP runtime when torch loads, so set before any cpx module imports torch (a
# choice in the environment wins). Threads that finish their share of an operation sleep
# instead of spinning: on a machine whose cores other programs also use, spinning threads
# keep those cores busy while the thread they wait for is descheduled, and a 2-thread training
# step ran 10-18x slower than with this (benchmarks/cpu_step.py; benchmarks/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "open_run", "predict", "score"]

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cpx.eval.validate import FolderScore
    from cpx.runs.handle import RunHandle

ImageLike = Union[str, "os.PathLike[str]", "np.ndarray", "torch.Tensor"]


def create_model(name: str, num_classes: Optional[int] = None, *, competition: Optional[str] = None,
                 **options: Any) -> "torch.nn.Module":
    """A freshly initialised model registered under ``name`` (``cpx plugins`` lists them).

    :param num_classes: output channels; default: the classes of ``competition`` (or of the only
        registered competition).
    :param options: the model's options (validated by its pydantic ``Options``; unknown ones
        are errors), e.g. ``dropout=0.1``.
    :returns: an ``nn.Module`` mapping float images ``B x 3 x H x W`` in [0, 1] to logits
        ``B x num_classes x H x W``.
    :raises UnknownComponent: no model of that name (close names are suggested).
    :raises ConfigError: an option that does not validate, or no competition to take
        ``num_classes`` from.
    """
    from cpx.kernel.errors import ConfigError
    from cpx.kernel.manager import get_host

    host = get_host()
    entry = host.models.get(name)
    if num_classes is None:
        names = [competition] if competition else host.competitions.names()
        if len(names) != 1:
            raise ConfigError("create_model: pass num_classes= or competition= (several competitions are registered)")
        num_classes = host.competition(names[0]).num_classes
    return entry.create(options, int(num_classes), where=f"{name} options")


def open_run(ref: str, workspace: Optional[Union[str, os.PathLike]] = None) -> "RunHandle":
    """A recorded run by id, unique id prefix or name.

    The handle has ``config`` (the resolved :class:`~cpx.kernel.config.ExperimentConfig`),
    ``history`` (per-epoch records), ``val_names``, ``competition``, ``folder`` and
    ``load_model(checkpoint="best", device="cpu")``.

    :raises RunError: no such run, an ambiguous prefix, or a run without a readable config.
    """
    from cpx.kernel.workspace import Workspace
    from cpx.runs.handle import open_run as _open_run

    return _open_run(ref, Workspace.current(workspace))


def predict(run: Union[str, "RunHandle"], images: Sequence[ImageLike], *, checkpoint: str = "best",
            tta: Union[str, Sequence[str]] = (), device: str = "auto", precision: str = "auto",
            calibration: bool = True, post: Union[None, str, Sequence[str]] = None,
            workspace: Optional[Union[str, os.PathLike]] = None) -> list["np.ndarray"]:
    """Class-id masks for ``images`` from a recorded run, as ``cpx predict`` makes them.

    :param run: a run id, prefix or name, or a handle from :func:`open_run`.
    :param images: paths of image files, ``H x W x 3`` uint8 arrays (RGB) or ``3 x H x W``
        uint8 tensors; any sizes.
    :param tta: test-time augmentation, ``"flip"``, ``"scale"`` or both (``"flip,scale"``);
        a flip swaps left/right classes back.
    :param calibration: apply the logit offsets ``cpx calibrate`` stored with the run.
    :param post: post-processing steps, e.g. ``"small-components,fill-holes"``.
    :returns: per image an ``H x W`` uint8 array of class ids at the image's own size.
    :raises DataError: an unreadable image or an array of the wrong shape or dtype.
    :raises RunError: the run or its checkpoint cannot be used.
    """
    import numpy as np
    import torch

    from cpx.data.images import BadFile, read_rgb
    from cpx.eval.predict import predictor_for_run
    from cpx.kernel.errors import DataError
    from cpx.kernel.manager import get_host
    from cpx.kernel.workspace import Workspace

    ref = run if isinstance(run, str) else run.id
    tensors = []
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            try:
                array, _ = read_rgb(image)
            except BadFile as bad:
                raise bad.error() from None
            tensors.append(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise DataError(f"image {i}: expected an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
            tensors.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        else:
            tensors.append(image)
    predictor = predictor_for_run(ref, Workspace.current(workspace), get_host(), checkpoint=checkpoint, tta=tta,
                                  device=device, precision=precision, calibration=calibration, post=post)
    return [mask.numpy() for mask in predictor.predict(tensors)]


def score(pred_dir: Union[str, os.PathLike], gt_dir: Union[str, os.PathLike],
          competition: Optional[str] = None) -> "FolderScore":
    """The competition metric of the masks in ``pred_dir`` against those in ``gt_dir``
    (matched by file stem), as ``cpx score`` computes it.

    :returns: a :class:`~cpx.eval.validate.FolderScore`: ``scores.fscore`` (mean over images of
        the per-image F over the classes present in the ground truth), ``per_image``,
        per-class F, mIoU, pixel accuracy, and ``problems`` that prevented scoring.
    :raises DataError: a folder that does not exist or holds no masks.
    :raises ConfigError: several competitions are registered and none is named.
    """
    from cpx.eval.validate import score_folders
    from cpx.kernel.errors import ConfigError
    from cpx.kernel.manager import get_host

    host = get_host()
    names = [competition] if competition else host.competitions.names()
    if len(names) != 1:
        raise ConfigError("score: pass competition= (several competitions are registered)")
    return score_folders(pred_dir, gt_dir, host.competition(names[0]))
