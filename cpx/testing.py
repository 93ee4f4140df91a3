"""Pytest fixtures and contract checks for cpx and for authors of cpx plugins (installed as a
pytest plugin, so a plugin's own test suite gets them without imports).

Fixtures:

* ``cpx_workspace``: a fresh temporary workspace, made current (cwd and ``CPX_WORKSPACE``).
* ``cpx_host``: a fresh plugin host with the built-ins and no installed entry points, made
  current for the test; register fakes with ``cpx_host.register(module_or_object)``.
* ``cpx_synthetic``: a small synthetic data folder in the competition layout.

Contract checks, one per kind of component, each raising ``AssertionError`` with the reason:
:func:`check_model`, :func:`check_loss` (with :func:`check_loss_ignores`), :func:`check_augmentation`,
:func:`check_postprocessor`, :func:`check_competition`, :func:`check_submission_format` (a
format's writer and reader agree, from a folder and from a zip), :func:`check_metric`,
:func:`check_logger` (a tracker logger, written to twice and read back). cpx runs
them over every registered component, built-in or third-party (``tests/test_contracts.py``); a
plugin author runs them over their own::

    import pytest
    from cpx.kernel.manager import create_plugin_host
    from cpx.testing import check_model

    HOST = create_plugin_host()

    @pytest.mark.parametrize("name", ["my-model"])
    def test_my_model_keeps_the_contract(name):
        check_model(HOST.models.get(name), num_classes=19, max_params=1_821_085)
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from cpx.data.competition import Competition
from cpx.kernel.errors import DataError
from cpx.kernel.manager import create_plugin_host, set_host
from cpx.kernel.registry import Entry
from cpx.kernel.workspace import Workspace
from cpx.submit.checkreport import CheckReport
from cpx.submit.formats import SubmissionFormat
from cpx.submit.zipentries import DirSource, FileSource, ZipSource, entry_problems, size_problems


@pytest.fixture
def cpx_workspace(tmp_path, monkeypatch) -> Workspace:
    """A fresh temporary workspace, made current (working directory and ``CPX_WORKSPACE``),
    with Codabench credentials kept out of the user's home.
    """
    root = tmp_path / "workspace"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("CPX_WORKSPACE", str(root))
    monkeypatch.setenv("CPX_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("CODABENCH_TOKEN", raising=False)
    return Workspace(root)


@pytest.fixture
def cpx_host():
    """A fresh plugin host with the built-ins and no installed entry points, current for the test."""
    host = create_plugin_host(entry_points=False)
    previous = set_host(host)
    yield host
    set_host(previous)


@pytest.fixture
def cpx_synthetic(tmp_path_factory, cpx_host) -> Path:
    """24 synthetic 64x64 images of the first registered competition with a generator (+4 test)."""
    from cpx.data import write_dataset

    competition = next(c.target for c in cpx_host.competitions if c.target.synthesize)
    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(root, competition, competition.synthesize(28, 64, 0), test_count=4)
    return root


# --------------------------------------------------------------------------------------------
# Contract checks (tiny CPU inputs: each takes well under a second for a model of ~2M weights)


def _imported_modules(path: Path) -> Iterator[str]:
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")


def check_options(entry: Entry) -> None:
    """The component's options model forbids unknown fields and describes every field."""
    try:
        entry.options.model_validate({"__not_an_option__": 1})
    except ValidationError:
        pass
    else:
        raise AssertionError(f"{entry.kind} {entry.name}: its options accept unknown fields (use extra='forbid')")
    undocumented = [row["name"] for row in entry.options_schema() if not row["description"]]
    assert not undocumented, f"{entry.kind} {entry.name}: options without a description: {undocumented}"


def check_model(entry: Entry, num_classes: int = 19, max_params: Optional[int] = None,
                size: tuple[int, int] = (64, 48), in_channels: int = 3) -> torch.nn.Module:
    """The model contract of :func:`cpx.kernel.hookspecs.register_models`, on default options,
    for images of ``in_channels`` bands.

    A factory that takes the keyword ``in_channels`` gets it, as training passes the
    competition's ``channels``; one that does not takes RGB only, so checking it at another
    band count fails with that reason.

    Checks: logits ``B x num_classes x H x W`` (float32, finite) for float images at two sizes;
    backward reaches every parameter; a bf16-autocast, channels-last training step (how cpx
    trains on CPU); fewer than ``max_params`` parameters; ``forward_coarse`` (when present)
    resizes bilinearly to ``forward``; ``cpx_source`` (when present) names a file importing only
    torch and the standard library whose builder rebuilds the same network. Returns the model.
    """
    check_options(entry)
    what = f"model {entry.name}"
    torch.manual_seed(0)
    if entry.accepts("in_channels"):
        model = entry.create({}, num_classes, in_channels=in_channels)
    else:
        assert in_channels == 3, \
            f"{what}: its factory takes no in_channels keyword, so it cannot build a model for {in_channels} bands"
        model = entry.create({}, num_classes)
    assert isinstance(model, torch.nn.Module), f"{what}: the factory returned {type(model).__name__}, not an nn.Module"
    h, w = size
    c = in_channels
    model.eval()
    with torch.no_grad():
        for shape in ((2, c, h, w), (1, c, h + 8, w - 8)):
            out = model(torch.rand(*shape))
            assert tuple(out.shape) == (shape[0], num_classes, *shape[2:]), \
                f"{what}: input {tuple(shape)} gave {tuple(out.shape)}, expected logits at the input size"
            assert out.dtype == torch.float32 and torch.isfinite(out).all(), f"{what}: non-finite or non-float32 logits"
    if max_params is not None:
        count = sum(p.numel() for p in model.parameters())
        assert count < max_params, f"{what}: {count:,} parameters, the cap is fewer than {max_params:,}"
    coarse = getattr(model, "forward_coarse", None)
    if coarse is not None:
        x = torch.rand(1, c, h + 8, w - 8)
        with torch.no_grad():
            small, full = coarse(x), model(x)
        assert small.dtype == torch.float32, f"{what}: forward_coarse must return float32"
        torch.testing.assert_close(F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False),
                                   full, msg=f"{what}: forward_coarse resized is not forward")
    trained = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    trained.zero_grad(set_to_none=True)
    x = torch.rand(2, c, h, w).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = trained(x)
    F.cross_entropy(out.float(), torch.randint(0, num_classes, (2, h, w))).backward()
    missing = [n for n, p in trained.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{what}: no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in trained.parameters() if p.grad is not None), \
        f"{what}: non-finite gradients in a bf16 training step"
    source = getattr(model, "cpx_source", None)
    if source is not None:
        check_model_source(model, what, in_channels)
    return model


def check_model_source(model: torch.nn.Module, what: str = "model", in_channels: int = 3) -> None:
    """``model.cpx_source = (arch_file, builder_name, kwargs)`` rebuilds ``model`` standalone:
    the file imports only torch and the standard library, and ``builder(**kwargs)`` loads the
    model's state_dict and gives the same logits on images of ``in_channels`` bands. This is
    what ``cpx package`` copies into a submission's ``solution/``."""
    source = model.cpx_source
    assert isinstance(source, tuple) and len(source) == 3, f"{what}: cpx_source must be (arch_file, builder, kwargs)"
    arch_file, builder, kwargs = source
    assert Path(arch_file).is_file(), f"{what}: cpx_source names {arch_file}, which does not exist"
    for module in _imported_modules(arch_file):
        top = module.split(".")[0]
        assert top == "torch" or top in sys.stdlib_module_names, f"{what}: {arch_file} imports {module}"
    json.dumps(kwargs)  # the kwargs go into model.json
    spec = importlib.util.spec_from_file_location(f"cpx_standalone_{abs(hash(arch_file))}", arch_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = getattr(module, builder)(**kwargs).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(1, in_channels, 40, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x), msg=f"{what}: the standalone rebuild differs")


def check_loss(entry: Entry, num_classes: int = 19) -> None:
    """The loss contract of :func:`cpx.kernel.hookspecs.register_losses`, on default options:
    a finite float32 scalar with finite gradients for float32 and bf16 logits ``B x C x H x W``
    and long or uint8 targets ``B x H x W``; a perfect prediction scores lower than a wrong one;
    and, for a factory taking ``ignore_index``, :func:`check_loss_ignores`."""
    check_options(entry)
    fn = entry.create({}, num_classes)
    what = f"loss {entry.name}"
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, num_classes, (2, 24, 20), generator=gen)
    for dtype, target_dtype in ((torch.float32, torch.long), (torch.bfloat16, torch.uint8)):
        logits = torch.randn(2, num_classes, 24, 20, generator=gen).to(dtype).requires_grad_(True)
        loss = fn(logits, target.to(target_dtype))
        assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss), \
            f"{what}: expected a finite float32 scalar for {dtype} logits, got {loss}"
        loss.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad.float()).all(), f"{what}: bad gradient"
    sure = F.one_hot(target, num_classes).permute(0, 3, 1, 2).float() * 20.0
    wrong = F.one_hot((target + 1) % num_classes, num_classes).permute(0, 3, 1, 2).float() * 20.0
    assert fn(sure, target) < fn(wrong, target), f"{what}: a perfect prediction does not score lower"
    if entry.accepts("ignore_index"):
        check_loss_ignores(entry, num_classes)


def check_loss_ignores(entry: Entry, num_classes: int = 19) -> None:
    """A loss built with ``ignore_index=255`` leaves out target pixels holding 255: other logits
    there change neither the loss nor the gradient elsewhere, their own gradient is 0, and a
    batch of ignored pixels only gives a finite loss."""
    from cpx.data.masks import IGNORE

    fn = entry.create({}, num_classes, ignore_index=IGNORE)
    what = f"loss {entry.name} (ignore_index={IGNORE})"
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, num_classes, (2, 24, 20), generator=gen)
    target[:, :, 15:] = IGNORE
    ignored = (target == IGNORE).unsqueeze(1).expand(-1, num_classes, -1, -1)
    logits = torch.randn(2, num_classes, 24, 20, generator=gen)
    results = []
    for values in (logits, logits.masked_fill(ignored, 5.0)):
        z = values.clone().requires_grad_(True)
        loss = fn(z, target)
        loss.backward()
        results.append((loss.detach(), z.grad))
    (loss, grad), (other_loss, other_grad) = results
    assert torch.isfinite(loss), f"{what}: non-finite loss"
    torch.testing.assert_close(other_loss, loss, msg=f"{what}: logits at ignored pixels change the loss")
    torch.testing.assert_close(other_grad, grad, msg=f"{what}: logits at ignored pixels change the gradient")
    assert (grad[ignored] == 0).all(), f"{what}: ignored pixels get a gradient"
    z = logits.clone().requires_grad_(True)
    empty = fn(z, torch.full_like(target, IGNORE))
    empty.backward()
    assert torch.isfinite(empty) and torch.isfinite(z.grad).all(), f"{what}: a wholly ignored batch is not finite"


def check_augmentation(entry: Entry, competition: Competition) -> None:
    """The augmentation contract of :func:`cpx.kernel.hookspecs.register_augmentations`:
    on images of the competition's ``channels`` bands and masks with some ignored pixels,
    shapes and dtypes kept, images in [0, 1], masks hold only class ids and
    :data:`cpx.data.masks.IGNORE`, the same seed gives the same batch."""
    from cpx.data.masks import IGNORE

    check_options(entry)
    augment = entry.create({}, competition)
    what = f"augmentation {entry.name}"
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, competition.channels, 40, 48, generator=gen)
    masks = torch.randint(0, competition.num_classes, (3, 40, 48), generator=gen)
    masks[:, :, -6:] = IGNORE  # as letterboxing pads a wide image
    torch.manual_seed(7)
    out_images, out_masks = augment(images, masks)
    assert out_images.shape == images.shape and out_images.dtype == images.dtype, f"{what}: image shape/dtype changed"
    assert out_masks.shape == masks.shape and out_masks.dtype == masks.dtype, f"{what}: mask shape/dtype changed"
    assert 0 <= float(out_images.min()) and float(out_images.max()) <= 1, f"{what}: images left [0, 1]"
    assert set(out_masks.unique().tolist()) <= set(range(competition.num_classes)) | {IGNORE}, \
        f"{what}: ids that are neither class ids nor IGNORE ({IGNORE})"
    torch.manual_seed(7)
    again = augment(images, masks)
    assert torch.equal(again[0], out_images) and torch.equal(again[1], out_masks), f"{what}: not reproducible"


def check_postprocessor(entry: Entry, competition: Competition) -> None:
    """The post-processor contract of :func:`cpx.kernel.hookspecs.register_postprocessors`, on
    default options: an H x W uint8 mask comes back with its shape and dtype, holding only ids
    of the competition, the same for the same input; and a ``cpx_source`` file imports only
    numpy, torch, Pillow and the standard library and gives exactly the same mask."""
    check_options(entry)
    fn = entry.create({}, competition)
    what = f"post-processor {entry.name}"
    rng = np.random.default_rng(0)
    mask = (rng.random((48, 40)) * 3).astype(np.uint8) * 4  # blobs of three classes plus specks
    mask[10:30, 8:30] = 1
    mask[15:18, 12:14] = 2
    out = fn(mask.copy())
    assert isinstance(out, np.ndarray) and out.shape == mask.shape and out.dtype == mask.dtype, \
        f"{what}: expected an H x W uint8 array back"
    assert int(out.max()) < competition.num_classes, f"{what}: unknown class ids"
    assert np.array_equal(fn(mask.copy()), out), f"{what}: not deterministic"
    source = getattr(fn, "cpx_source", None)
    if source is None:
        return
    assert isinstance(source, tuple) and len(source) == 3, f"{what}: cpx_source must be (file, function, kwargs)"
    path, function, kwargs = source
    assert Path(path).is_file(), f"{what}: cpx_source names {path}, which does not exist"
    for module in _imported_modules(path):
        top = module.split(".")[0]
        assert top in ("numpy", "torch", "PIL") or top in sys.stdlib_module_names, f"{what}: {path} imports {module}"
    json.dumps(kwargs)  # the kwargs go into model.json
    spec = importlib.util.spec_from_file_location(f"cpx_standalone_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    standalone = getattr(module, function)(mask.copy(), **kwargs)
    assert np.array_equal(standalone, out), f"{what}: the standalone {function}() gives another mask"


def check_competition(entry: Entry, host=None) -> None:
    """A competition profile: classes, a palette of RGB triples for them, flip pairs that are
    valid distinct class ids (with a pair side of right, left or None and midline classes outside
    the pairs), a positive training size, a metric and a submission format the plugins know,
    and a synthetic generator (when present) that gives images of the competition's channels
    (height the size asked for; width too unless the profile's size is ``variable``) with masks
    of class ids of the same size."""
    comp = entry.target
    what = f"competition {entry.name}"
    assert isinstance(comp, Competition), f"{what}: registered {type(comp).__name__}, not a Competition"
    assert comp.name == entry.name, f"{what}: the profile is named {comp.name!r}"
    assert comp.num_classes >= 2 and len(set(comp.classes)) == comp.num_classes, f"{what}: class names must be unique"
    assert not comp.palette or (len(comp.palette) >= comp.num_classes
                                and all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in comp.palette)), \
        f"{what}: the palette needs an RGB triple (0..255) per class"
    ids = [i for pair in comp.flip_pairs for i in pair]
    assert len(ids) == len(set(ids)) and all(0 <= i < comp.num_classes for i in ids), f"{what}: bad flip pairs"
    perm = comp.flip_permutation()
    assert sorted(perm) == list(range(comp.num_classes)) and [perm[p] for p in perm] == list(range(comp.num_classes))
    assert comp.pair_side in (None, "right", "left"), f"{what}: pair_side must be 'right', 'left' or None"
    assert all(0 <= i < comp.num_classes and i not in ids for i in comp.midline_classes), \
        f"{what}: midline classes must be class ids outside the flip pairs"
    assert comp.image_size > 0
    if host is not None:
        comp.bind(host)  # an unknown metric or format, or options that do not validate, raise here
    if comp.synthesize is not None:
        samples = list(comp.synthesize(2, 32, 0))
        assert len(samples) == 2, f"{what}: synthesize(2, ...) gave {len(samples)} samples"
        for image, mask in samples:
            h, w = image.shape[:2]
            assert image.ndim == 3 and image.shape[2] == comp.channels and image.dtype == np.uint8, \
                f"{what}: synthetic image {image.shape}, expected H x W x {comp.channels} uint8"
            assert h == 32 and (w == 32 or comp.size == "variable"), f"{what}: synthetic image {h}x{w} for size 32"
            assert mask.shape == (h, w) and int(mask.max()) < comp.num_classes, f"{what}: synthetic mask"


def check_submission_format(entry: Entry, competition: Competition) -> SubmissionFormat:
    """The submission-format contract of :func:`cpx.kernel.hookspecs.register_submission_formats`,
    for ``competition`` with its own ``submission`` options when it names this format (else the
    format's defaults).

    Checks: the factory returns a :class:`~cpx.submit.formats.SubmissionFormat` with a one-line
    ``describe()`` and its ``entries()``; the writer refuses a mask that is not ``H x W`` uint8
    (``DataError``); random masks of three sizes (ids among ``kept_classes()``) written under
    image names with different suffixes are read back exactly (``H x W`` uint8, keyed by
    ``key()``) from the folder (``DirSource``) and from a zip of it opened as
    :func:`cpx.submit.zipcheck.check_zip` opens one (``ZipSource``), with no problem reported;
    the writer lists every file it wrote, each under one of ``entries()``. Returns the format.
    """
    check_options(entry)
    what = f"submission format {entry.name}"
    spec = competition.submission
    fmt = entry.create(spec.options if spec.name == entry.name else {}, competition, where="submission")
    assert isinstance(fmt, SubmissionFormat), f"{what}: the factory returned {type(fmt).__name__}"
    line = fmt.describe()
    assert isinstance(line, str) and line.strip() and "\n" not in line, f"{what}: describe() must be one line"
    tops = fmt.entries()
    assert isinstance(tops, tuple) and tops and all(isinstance(t, str) and t for t in tops), \
        f"{what}: entries() must be a non-empty tuple of top-level names"
    kept = fmt.kept_classes()
    assert set(kept) <= set(range(competition.num_classes)), f"{what}: kept_classes() {kept} are not class ids"
    rng = np.random.default_rng(0)
    masks = {name: rng.choice(np.array(kept, dtype=np.uint8), size=shape)
             for name, shape in (("IMG_0001.JPG", (37, 53)), ("scan-2.png", (64, 9)), ("a.b.tif", (1, 17)))}
    keys = {name: fmt.key(name) for name in masks}
    assert len(set(keys.values())) == len(keys), f"{what}: key() gives {keys}, not one key per image"
    with tempfile.TemporaryDirectory(prefix="cpx-format-") as tmp:
        root = Path(tmp) / "submission"
        writer = fmt.writer(root)
        for bad in (np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5), np.float32)):
            try:
                writer.add("refused.png", bad)
            except DataError:
                pass
            else:
                raise AssertionError(f"{what}: the writer took a {bad.dtype} {bad.shape} mask; "
                                     "refuse it with DataError")
        for name, mask in masks.items():
            writer.add(name, mask)
        written = writer.close()
        on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        assert sorted(written) == on_disk, f"{what}: close() lists {sorted(written)}, but it wrote {on_disk}"
        for rel in written:
            assert any(rel == t or (t.endswith("/") and rel.startswith(t)) for t in tops), \
                f"{what}: it wrote {rel}, outside its entries() {tops}"
        archive = Path(tmp) / "submission.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for rel in on_disk:
                zf.write(root / rel, rel)
        _check_read(fmt, DirSource(root), masks, keys, f"{what}, read from a folder")
        with zipfile.ZipFile(archive) as zf:
            report = CheckReport(path=str(archive), competition=competition.name)
            infos = zf.infolist()
            skipped = size_problems(infos, report)
            keep = entry_problems(infos, report)
            assert not report.problems, f"{what}: the zip of its files has problems: {report.problems}"
            source = ZipSource(zf, {i.filename: i.filename for i in keep}, frozenset(skipped))
            _check_read(fmt, source, masks, keys, f"{what}, read from a zip")
    return fmt


def _check_read(fmt: SubmissionFormat, files: FileSource, masks: dict[str, np.ndarray], keys: dict[str, str],
                what: str) -> None:
    report = CheckReport(path="", competition=fmt.competition.name)
    read = fmt.read(files, report)
    assert not report.problems, f"{what}: problems in what it wrote: {[str(p) for p in report.problems]}"
    assert sorted(read) == sorted(keys.values()), f"{what}: read keys {sorted(read)}, expected {sorted(keys.values())}"
    for name, mask in masks.items():
        got = read[keys[name]]
        assert isinstance(got, np.ndarray) and got.dtype == np.uint8 and got.shape == mask.shape, \
            f"{what}: {name} came back as {getattr(got, 'dtype', type(got))} {getattr(got, 'shape', '')}, " \
            f"expected uint8 {mask.shape}"
        assert np.array_equal(got, mask), f"{what}: {name} came back with {int((got != mask).sum())} pixels changed"


def check_metric(entry: Entry, classes: tuple = ("background", "a", "b"), options: Optional[dict] = None) -> None:
    """The metric contract of :func:`cpx.kernel.hookspecs.register_metrics` for ``classes`` (with
    ``options`` for a metric that needs some, e.g. ``{"class": "a"}``).

    Checks: the factory returns a :class:`cpx.eval.metrics.Metric` with a label; per-image values
    are one float per image in 0..1 (or NaN); the set's value is in 0..1; a perfect prediction
    scores at least as well as a noisy one (in the metric's direction); a pooled metric's value
    equals its formula on the summed counts and a per-image one's the mean of its images'; and
    ground-truth pixels at the ignore index change nothing.
    """
    from cpx.data.masks import IGNORE
    from cpx.eval.metrics import Metric, ScoreAccumulator, confusion_per_image, counts_of, nanmean

    what = f"metric {entry.name}"
    metric = entry.create(options or {}, tuple(classes))
    assert isinstance(metric, Metric), f"{what}: the factory returned {type(metric).__name__}, not a Metric"
    assert metric.label, f"{what}: give it a label (what the number is, for people)"
    k = len(classes)
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, k, (9, 11)) for _ in range(4)]
    noisy = [np.where(rng.random(g.shape) < 0.5, g, rng.integers(0, k, g.shape)) for g in gts]

    def run(preds, truths) -> tuple:
        acc = ScoreAccumulator(metric, k)
        for p, g in zip(preds, truths):
            acc.update(torch.tensor(p), torch.tensor(g))
        return acc, acc.compute()

    acc, scores = run(noisy, gts)
    per_image = torch.tensor(scores.per_image, dtype=torch.float64)
    assert per_image.shape == (4,), f"{what}: expected 4 per-image values, got {list(per_image.shape)}"
    finite = per_image[~torch.isnan(per_image)]
    assert bool(((finite >= 0) & (finite <= 1)).all()), f"{what}: per-image values outside 0..1: {scores.per_image}"
    assert 0.0 <= scores.score <= 1.0, f"{what}: the set's value {scores.score} is outside 0..1"
    _, perfect = run(gts, gts)
    assert not metric.better(scores.score, perfect.score), \
        f"{what}: a noisy prediction ({scores.score}) beats a perfect one ({perfect.score})"
    tp, fp, fn = acc.counts()
    if metric.pooled:
        want = metric.pooled_value(tp.sum(0), fp.sum(0), fn.sum(0))
    else:
        want = float(nanmean(metric.image_values(tp, fp, fn), dim=0))
    assert abs(scores.score - want) < 1e-12, f"{what}: its value {scores.score} is not its formula's {want}"
    ignored = [g.copy() for g in gts]
    for g in ignored:
        g[:, 6:] = IGNORE
    _, with_ignore = run(noisy, ignored)
    _, cropped = run([p[:, :6] for p in noisy], [g[:, :6] for g in gts])
    assert abs(with_ignore.score - cropped.score) < 1e-12, f"{what}: pixels at the ignore index changed the score"
    tp1, fp1, fn1 = counts_of(confusion_per_image(torch.tensor(noisy[0]), torch.tensor(gts[0]), k))
    assert metric.class_values(tp1, fp1, fn1).shape == (k,), f"{what}: class_values must give one value per class"


def check_logger(entry: Entry, target: Optional[str]) -> None:
    """The logger contract of :func:`cpx.kernel.hookspecs.register_loggers`, on default options,
    writing to ``target`` (a fresh tracking URI or folder).

    A made-up run is logged twice, as a resumed run or a second export would be: a first logger
    starts it, logs epochs 1 and 2 and finishes it; a second logger on the same target starts
    it again, logs epochs 1 to 3 (1 and 2 unchanged) and finishes it with new summary values.
    Checks: the factory returns a :class:`cpx.track.Logger`-like object; and when the logger can
    read back (``read(run_id)`` not None): each epoch value is held once at its step, the last
    summary values are the latest, and the params and tags it holds are those logged.
    """
    import dataclasses

    from cpx.track import RunRecord

    check_options(entry)
    what = f"logger {entry.name}"
    first = entry.create({}, target)
    for method in ("start", "log_metrics", "finish"):
        assert callable(getattr(first, method, None)), f"{what}: the factory's object has no {method}()"
    epochs = {step: {"train_loss": 1.0 / step, "val_score": 0.25 * step, "lr": 1e-3 * step} for step in (1, 2, 3)}
    with tempfile.TemporaryDirectory(prefix="cpx-logger-") as tmp:
        history = Path(tmp) / "history.json"
        history.write_text(json.dumps([{"epoch": s, **v} for s, v in epochs.items()]))
        run = RunRecord(id="20260101-000000-contract-0a1b", name="contract", experiment="cpx-contract",
                        status="running", params={"optimizer.lr": "0.001", "model.options.depth": "4"},
                        tags={"cpx.run_id": "20260101-000000-contract-0a1b", "recipe": "contract"},
                        started_at=1767225600000)
        first.start(run)
        for step in (1, 2):
            first.log_metrics(step, epochs[step])
        first.finish(dataclasses.replace(run, status="stopped", summary={"epochs": 2.0, "best_val_score": 0.5},
                                         artifacts={"history.json": history}, finished_at=1767225660000))
        second = entry.create({}, target)
        second.start(run)
        for step in (1, 2, 3):
            second.log_metrics(step, epochs[step])
        done = dataclasses.replace(run, status="completed", summary={"epochs": 3.0, "best_val_score": 0.75},
                                   artifacts={"history.json": history}, finished_at=1767225720000)
        second.finish(done)
        held = second.read(run.id) if callable(getattr(second, "read", None)) else None
    if held is None:
        return
    for key in epochs[1]:
        steps = [s for s, _ in held.metrics.get(key, []) if s > 0]
        assert steps == [1, 2, 3], f"{what}: {key} is held at steps {steps}, expected each of 1, 2, 3 once"
        for step, value in held.metrics[key]:
            assert abs(value - epochs[step][key]) <= 1e-6 * max(1.0, abs(epochs[step][key])), \
                f"{what}: {key} at step {step} is {value}, logged {epochs[step][key]}"
    for key, value in done.summary.items():
        got = held.metrics.get(key, [])
        assert got and abs(got[-1][1] - value) < 1e-6, \
            f"{what}: summary {key} reads {got}, the latest logged is {value}"
    # a tracker without params or tags (TensorBoard's scalars) reads none back
    for kind, logged, read in (("param", run.params, held.params), ("tag", run.tags, held.tags)):
        for key, value in logged.items():
            if read:
                assert read.get(key) == value, f"{what}: {kind} {key} reads {read.get(key)!r}, logged {value!r}"
