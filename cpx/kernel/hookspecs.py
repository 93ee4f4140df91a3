"""Every hook cpx calls, in the order a session meets them.

Built-in plugins (``cpx_plugins``) and third-party ones use the same ``hookimpl`` marker.
A third-party package exposes a module through the ``cpx`` entry-point group::

    [project.entry-points.cpx]
    my_models = "my_package.cpx_plugin"

Registration hooks receive a ``register`` callback rather than returning values, so one
plugin can register several components and each registration carries its options model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import pluggy
from pydantic import BaseModel

if TYPE_CHECKING:
    import torch

# The kernel sits below cpx.data, so the competition profile type is named, not imported:
# a ``cpx.data.competition.Competition``.
Competition = Any

hookspec = pluggy.HookspecMarker("cpx")
hookimpl = pluggy.HookimplMarker("cpx")


# --- the registrars the registration hooks receive ---


class RegisterCompetition(Protocol):
    """The ``register`` callback of :func:`register_competitions`."""

    def __call__(self, name: str, competition: Competition, options: None = None,
                 description: str = "", origin: Optional[str] = None) -> None:
        """Register ``competition`` under ``name`` (which must equal ``competition.name``);
        ``origin`` names the file it was read from. A :class:`cpx.kernel.errors.ConfigError`
        in place of the profile records a file that could not be read: asking for ``name``
        then raises it."""


ModelFactory = Callable[[BaseModel, int], "torch.nn.Module"]
LossFactory = Callable[[BaseModel, int], Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]]
AugmentationFactory = Callable[[BaseModel, Competition], "torch.nn.Module"]


class RegisterModel(Protocol):
    """The ``register`` callback of :func:`register_models`."""

    def __call__(self, name: str, factory: ModelFactory, options: Optional[type[BaseModel]] = None,
                 description: str = "") -> None:
        """Register a model factory ``factory(options, num_classes[, in_channels=C]) -> nn.Module``."""


class RegisterLoss(Protocol):
    """The ``register`` callback of :func:`register_losses`."""

    def __call__(self, name: str, factory: LossFactory, options: Optional[type[BaseModel]] = None,
                 description: str = "") -> None:
        """Register a loss factory ``factory(options, num_classes[, class_frequencies=..., ignore_index=255])
        -> loss(logits, target)``."""


class RegisterAugmentation(Protocol):
    """The ``register`` callback of :func:`register_augmentations`."""

    def __call__(self, name: str, factory: AugmentationFactory, options: Optional[type[BaseModel]] = None,
                 description: str = "") -> None:
        """Register an augmentation factory ``factory(options, competition) -> nn.Module``."""


PostprocessorFactory = Callable[[BaseModel, Competition], Callable[[Any], Any]]
MetricFactory = Callable[[BaseModel, tuple], Any]
SubmissionFormatFactory = Callable[[BaseModel, Competition], Any]


class RegisterMetric(Protocol):
    """The ``register`` callback of :func:`register_metrics`."""

    def __call__(self, name: str, factory: MetricFactory, options: Optional[type[BaseModel]] = None,
                 description: str = "") -> None:
        """Register a metric factory ``factory(options, classes) -> cpx.eval.metrics.Metric``."""


class RegisterSubmissionFormat(Protocol):
    """The ``register`` callback of :func:`register_submission_formats`."""

    def __call__(self, name: str, factory: SubmissionFormatFactory, options: Optional[type[BaseModel]] = None,
                 description: str = "") -> None:
        """Register a format factory ``factory(options, competition) -> cpx.submit.formats.SubmissionFormat``."""


LoggerFactory = Callable[[BaseModel, Optional[str]], Any]


class RegisterLogger(Protocol):
    """The ``register`` callback of :func:`register_loggers`."""

    def __call__(self, name: str, factory: LoggerFactory, options: Optional[type[BaseModel]] = None,
                 description: str = "") -> None:
        """Register a logger factory ``factory(options, target) -> cpx.track.Logger``."""


class RegisterPostprocessor(Protocol):
    """The ``register`` callback of :func:`register_postprocessors`."""

    def __call__(self, name: str, factory: PostprocessorFactory, options: Optional[type[BaseModel]] = None,
                 description: str = "") -> None:
        """Register a post-processor factory ``factory(options, competition) -> fn(mask) -> mask``."""


# --- components: called once per plugin manager, when its registries are first built ---


@hookspec
def register_competitions(register: RegisterCompetition) -> None:
    """Register competition profiles.

    :param register: ``register(name, competition, description="")`` where ``competition``
        is a :class:`cpx.data.competition.Competition` (classes, channels, layout, mask
        encoding, metric, submission format, limits, rules), usually read from a YAML file
        with :func:`cpx.data.competition.load_profile`. A workspace's own
        ``competitions/*.yaml`` are registered the same way, by the built-in
        ``cpx_plugins.competitions``.

    Example::

        @hookimpl
        def register_competitions(register):
            register("my-challenge", load_profile(Path(__file__).with_name("my-challenge.yaml")))
    """


@hookspec
def register_models(register: RegisterModel) -> None:
    """Register segmentation models.

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options, num_classes)`` returns an ``nn.Module`` mapping float images
        ``B x C x H x W`` in [0, 1] to logits ``B x num_classes x H x W`` (any H, W), where C
        is the competition's ``channels`` (3 for RGB; 1 for grey, 4 for RGB + near-infrared,
        ...). A factory that also takes the keyword ``in_channels`` gets C and builds its
        first layer for that many bands; a factory without it builds models for RGB (C = 3)
        only. With three bands or more, the first three are RGB.

    Optional attributes of the returned module that cpx uses when present:

    * ``cpx_source = (arch_file, builder_name, kwargs)``: the absolute path of a file that
      imports only torch and the standard library, the name of a function in it, and JSON-able
      keyword arguments such that ``builder(**kwargs)`` rebuilds the network. ``cpx package``
      copies the file into the submission's ``solution/``; a model without it trains,
      validates and predicts, but cannot be packaged (cpx says so before predicting).
    * ``forward_coarse(x)``: float32 logits at a reduced size whose bilinear
      (``align_corners=False``) resize to the input size is ``forward(x)``; with several TTA
      views cpx then merges views at that size and resizes once.

    :func:`cpx.testing.check_model` checks all of this for a registered model.

    Example::

        @hookimpl
        def register_models(register):
            register("tiny", lambda options, num_classes, in_channels=3: Tiny(num_classes, in_channels),
                     options=TinyOptions)
    """


@hookspec
def register_losses(register: RegisterLoss) -> None:
    """Register training losses.

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options, num_classes)`` returns a callable ``loss(logits, target)`` giving a
        scalar tensor; ``target`` holds class ids, ``B x H x W`` (long). A factory that also
        takes the keyword ``class_frequencies`` gets, in training, the share of the training
        masks' pixels of each class (a list of ``num_classes`` floats summing to 1), for class
        weights computed from the data (``class_weights: sqrt-inverse-frequency``). A factory
        that takes the keyword ``ignore_index`` gets ``255`` (:data:`cpx.data.masks.IGNORE`):
        target pixels holding it (letterbox padding, a competition's ``masks.ignore_index``)
        must add nothing to the loss or its gradient, normalisations counting only the others,
        as ``F.cross_entropy(ignore_index=255)`` does. A factory without the keyword may still
        get targets holding 255 (letterboxed images), so a loss that cannot ignore pixels
        should say so (a ``ValueError``) rather than index with 255.

    Example::

        @hookimpl
        def register_losses(register):
            register("lovasz", create_lovasz, options=LovaszOptions)
    """


@hookspec
def register_augmentations(register: RegisterAugmentation) -> None:
    """Register batch augmentations that run on tensors (image and mask together).

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options, competition)`` returns an ``nn.Module`` whose
        ``forward(images, masks)`` takes float images ``B x C x H x W`` in [0, 1] (C the
        competition's ``channels``) and long masks ``B x H x W`` and returns both transformed,
        at ``H x W`` or (random crops) at another size shared by images and masks. Masks hold
        class ids and ``255`` (:data:`cpx.data.masks.IGNORE`) at ignored pixels, which must
        stay ``255`` wherever they land. The competition gives the left/right class pairs a
        horizontal flip must swap.

    Example::

        @hookimpl
        def register_augmentations(register):
            register("cutout", create_cutout, options=CutoutOptions)
    """


@hookspec
def register_postprocessors(register: RegisterPostprocessor) -> None:
    """Register mask post-processors, which validate, predict and package apply (``--post``)
    to every predicted mask, in the order given.

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options, competition)`` returns a callable ``fn(mask) -> mask`` on H x W
        uint8 numpy arrays of class ids (the same shape and dtype back).

    Optional attribute of the returned callable that cpx uses when present:

    * ``cpx_source = (file, function_name, kwargs)``: the absolute path of a file that imports
      only numpy, torch, Pillow and the standard library, with a top-level function such that
      ``function(mask, **kwargs)`` returns exactly what ``fn(mask)`` does. ``cpx package`` copies
      the file into the submission's ``solution/`` and ``run.py`` calls it; a post-processor
      without it validates and predicts, but cannot be packaged.

    :func:`cpx.testing.check_postprocessor` checks this for a registered post-processor.

    Example::

        @hookimpl
        def register_postprocessors(register):
            register("majority", create_majority_filter, options=MajorityOptions)
    """


# --- scoring and submitting: what the organisers rank, and the files they rank ---


@hookspec
def register_metrics(register: RegisterMetric) -> None:
    """Register metrics a competition profile can rank by (``metric: {name: ..., ...}``).

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options, classes)`` gets the options written beside the name in the profile
        (validated) and the competition's class names, and returns a
        :class:`cpx.eval.metrics.Metric`: each image's value and the value over a set, both
        from per-image confusion counts (tp, fp, fn per class), so per-image means and
        dataset-pooled metrics share one contract. Pixels at the competition's ignore index
        are never counted.

    :func:`cpx.testing.check_metric` checks a registered metric.

    Example::

        @hookimpl
        def register_metrics(register):
            register("recall", lambda options, classes: MeanRecall(), description="mean class recall")
    """


@hookspec
def register_submission_formats(register: RegisterSubmissionFormat) -> None:
    """Register submission formats: what a zip holds for the scorer (``submission: {name: ...}``).

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options, competition)`` returns a :class:`cpx.submit.formats.SubmissionFormat`:
        a writer (``cpx package``, and the references ``--official`` scoring lays out) and a
        reader that decodes a zip or folder back into masks, naming each problem (``package
        --check``, ``submit --zip``, ``cpx score``).

    :func:`cpx.testing.check_submission_format` checks a registered format (a round trip).

    Example::

        @hookimpl
        def register_submission_formats(register):
            register("csv-rle", CsvRle, options=CsvRleOptions)
    """


# --- tracking: where runs go outside cpx ---


@hookspec
def register_loggers(register: RegisterLogger) -> None:
    """Register experiment trackers that runs are logged to: live while training
    (``cpx train --log-to NAME:TARGET``, ``cpx.train(..., log_to=...)``) and afterwards
    (``cpx runs export --to NAME:TARGET``).

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options, target)`` gets the part of ``NAME:TARGET`` after the first colon (a
        tracking URI, a folder; None when only the name is given) and returns a
        :class:`cpx.track.Logger`: ``start(run)``, ``log_metrics(step, metrics)`` and
        ``finish(run)`` for each run in turn, where ``run`` is a :class:`cpx.track.RunRecord`
        (params: the resolved config flattened; tags; per-epoch metrics by epoch; summary values,
        submissions and their scores, artifacts). Starting a run the tracker already holds (a
        second export, a resumed run) must reopen it, and a metric value already held for a
        step must not be written twice. Import the tracker's package inside the factory, not
        at module level, so the command line starts fast; when it is missing, raise
        :class:`cpx.kernel.errors.MissingDependency` naming what to install.

    :func:`cpx.testing.check_logger` checks a registered logger (twice over one target, read
    back through its optional ``read(run_id)``).

    Example::

        @hookimpl
        def register_loggers(register):
            register("wandb", lambda options, target: WandbLogger(project=target), options=WandbOptions)
    """


# --- command line: called when the CLI application is built ---


@hookspec
def register_commands(app: Any) -> None:
    """Add commands to the ``cpx`` command line.

    :param app: the ``typer.Typer`` application; add commands with ``@app.command()``.

    Example::

        @hookimpl
        def register_commands(app):
            @app.command()
            def hello():
                print("hello from my plugin")
    """
