"""Every hook cpx calls, in the order a session meets them.

Built-in plugins (``cpx_plugins``) and third-party ones use the same ``hookimpl`` marker.
A third-party package exposes a module through the ``cpx`` entry-point group::

    [project.entry-points.cpx]
    my_models = "my_package.cpx_plugin"

Registration hooks receive a ``register`` callback rather than returning values, so one
plugin can register several components and each registration carries its options model.
"""

import pluggy

hookspec = pluggy.HookspecMarker("cpx")
hookimpl = pluggy.HookimplMarker("cpx")


# --- components: called once per plugin manager, when its registries are first built ---


@hookspec
def register_competitions(register):
    """Register competition profiles.

    :param register: ``register(name, competition, description="")`` where ``competition``
        is a :class:`cpx.data.competition.Competition` (classes, palette, flip pairs, limits,
        submission layout, rules).

    Example::

        @hookimpl
        def register_competitions(register):
            register("my-challenge", Competition(name="my-challenge", classes=["bg", "road"]))
    """


@hookspec
def register_models(register):
    """Register segmentation models.

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options, num_classes)`` returns an ``nn.Module`` mapping float images
        ``B x 3 x H x W`` in [0, 1] to logits ``B x num_classes x H x W``. Optionally the
        module also has ``forward_coarse(x)``: float32 logits at a reduced size whose
        bilinear (``align_corners=False``) resize to the input size is ``forward(x)``; with
        several TTA views cpx then merges views at that size and resizes once.

    Example::

        @hookimpl
        def register_models(register):
            register("tiny", lambda options, num_classes: Tiny(num_classes), options=TinyOptions)
    """


@hookspec
def register_losses(register):
    """Register training losses.

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options, num_classes)`` returns a callable ``loss(logits, target)`` giving a
        scalar tensor; ``target`` holds class ids, ``B x H x W`` (long).

    Example::

        @hookimpl
        def register_losses(register):
            register("lovasz", create_lovasz, options=LovaszOptions)
    """


@hookspec
def register_augmentations(register):
    """Register batch augmentations that run on tensors (image and mask together).

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options, competition)`` returns an ``nn.Module`` whose
        ``forward(images, masks)`` takes float images ``B x 3 x H x W`` in [0, 1] and long
        masks ``B x H x W`` and returns both transformed. The competition gives the
        left/right class pairs a horizontal flip must swap.

    Example::

        @hookimpl
        def register_augmentations(register):
            register("cutout", create_cutout, options=CutoutOptions)
    """


# --- command line: called when the CLI application is built ---


@hookspec
def register_commands(app):
    """Add commands to the ``cpx`` command line.

    :param app: the ``typer.Typer`` application; add commands with ``@app.command()``.

    Example::

        @hookimpl
        def register_commands(app):
            @app.command()
            def hello():
                print("hello from my plugin")
    """
