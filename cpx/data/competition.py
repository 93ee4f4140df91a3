"""What cpx knows about a competition: its profile.

A profile is data: a YAML file (``competitions/NAME.yaml`` in a workspace, or shipped by a
plugin) validated by the pydantic models below, one line per error naming the file and field.
A plugin may also build one in Python, for what data cannot say (a synthetic-data generator).
Nothing in the core names a particular challenge; every class list, limit, file layout, metric,
submission format and rule comes from a profile::

    name: veg
    classes: [background, vegetation]
    channels: 3
    size: variable
    layout: {train_images: img/train, train_masks: ann/train, val_images: img/val,
             val_masks: ann/val, test_images: img/test, image_suffixes: [.JPG, .jpg],
             mask_suffix: .png}
    masks: {values: {0: 0, 255: 1}}
    metric: {name: class-iou, class: vegetation, scale: 100}
    submission: {name: rle-json, file: results.json, order: column-major, index_base: 1}
    rules: {submissions_per_phase: 5}

A profile made from the organisers' Codabench bundle (``cpx init --bundle``) also has the
bundle's ``phases`` (dates, limits, time limit, the scoring program) and the ranked
``leaderboard`` column, named as Codabench names them::

    phases:
      - {name: Development, start: 2025-01-01 00:00:00, end: 2025-03-01 00:00:00,
         max_submissions: 100, max_submissions_per_day: 5, execution_time_limit: 600,
         scoring_program: veg/scoring_program}
    leaderboard: {column: iou, sorting: desc}

The metric and the submission format are plugins (``register_metrics``,
``register_submission_formats``): their names and options are checked against the registries
when the profile is first used (:meth:`Competition.bind`).
"""

from __future__ import annotations

import datetime as _dt
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cpx.kernel.errors import ConfigError
from cpx.kernel.registry import format_validation_error
from cpx.kernel.yamlfile import read_yaml

if TYPE_CHECKING:
    import numpy as np

# Inside cpx, pixels at the competition's ignore index (masks.ignore_index) hold this class id (a
# profile has at most 255 classes, so no class id is 255); cpx.data.masks maps stored values to it.
IGNORE = 255

# (image uint8 H x W x C, mask uint8 H x W class ids) pairs from a procedural generator
Synthesizer = Callable[[int, int, int], Iterator[tuple["np.ndarray", "np.ndarray"]]]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# the folders of a data folder a profile names, in the order cpx reads them
DATA_PARTS = ("train_images", "train_masks", "val_images", "val_masks", "test_images")


class _Section(BaseModel):
    """A profile section: unknown keys are typos, values are frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)


def _suffix(value: str) -> str:
    value = str(value).strip()
    if not value.startswith(".") or len(value) < 2 or "/" in value or "\\" in value:
        raise ValueError(f"{value!r} is not a file suffix such as .png")
    return value


class Layout(_Section):
    """Where a competition's files live, relative to its data folder. Suffixes match in any
    case (``.JPG`` and ``.jpg`` alike). ``val_images``/``val_masks`` name the organisers' own
    validation split; without them cpx holds out a share of the training pairs."""

    train_images: str = Field("train/images", description="training images")
    train_masks: str = Field("train/masks", description="training masks")
    val_images: Optional[str] = Field(None, description="the organisers' validation images, when they give a split")
    val_masks: Optional[str] = Field(None, description="the organisers' validation masks")
    test_images: str = Field("test/images", description="test images, predicted for a submission")
    image_suffixes: tuple[str, ...] = Field((".jpg", ".jpeg", ".png"), min_length=1,
                                            description="image file suffixes, any case")
    mask_suffix: str = Field(".png", description="mask file suffix, any case")
    mask_pattern: Optional[str] = Field(None, description="a mask's file name from its image's: {stem} (the name "
                                                          "without suffix) or {name} (with it), e.g. "
                                                          "{stem}_segmentation.png; default {stem} + mask_suffix")

    @field_validator("image_suffixes", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("image_suffixes")
    @classmethod
    def _suffixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_suffix(v) for v in value)

    @field_validator("mask_suffix")
    @classmethod
    def _mask_suffix(cls, value: str) -> str:
        return _suffix(value)

    @field_validator("train_images", "train_masks", "val_images", "val_masks", "test_images")
    @classmethod
    def _relative(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        p = Path(value)
        if p.is_absolute() or ".." in p.parts or not value.strip():
            raise ValueError(f"{value!r}: a folder inside the data folder (relative, without ..)")
        return value

    @field_validator("mask_pattern")
    @classmethod
    def _pattern(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        if not fields or not fields <= {"stem", "name"}:
            raise ValueError(f"{value!r}: use {{stem}} or {{name}} (and no other field)")
        if "/" in value or "\\" in value:
            raise ValueError(f"{value!r}: a file name, not a path")
        return value

    @model_validator(mode="after")
    def _val_pair(self) -> "Layout":
        if (self.val_images is None) != (self.val_masks is None):
            raise ValueError("val_images and val_masks: give both or neither")
        if self.mask_pattern is not None and not self.mask_pattern.lower().endswith(self.mask_suffix.lower()):
            raise ValueError(f"mask_pattern {self.mask_pattern!r} does not end in mask_suffix {self.mask_suffix}")
        return self

    @property
    def has_val(self) -> bool:
        """Whether the organisers give their own validation split."""
        return self.val_images is not None

    def mask_name(self, image_name: str) -> str:
        """The mask file name of the image file ``image_name`` (e.g. ``IMG_1.JPG`` -> ``IMG_1.png``)."""
        stem = Path(image_name).stem
        if self.mask_pattern is None:
            return f"{stem}{self.mask_suffix}"
        return self.mask_pattern.format(stem=stem, name=image_name)

    def accepts_image(self, file_name: str) -> bool:
        """Whether ``file_name`` has one of the image suffixes (any case)."""
        return Path(file_name).suffix.lower() in {s.lower() for s in self.image_suffixes}


class MaskEncoding(_Section):
    """How class ids are stored in mask files.

    ``values`` maps each stored pixel value to a class id (e.g. ``{0: 0, 255: 1}``); without it
    stored values are class ids, and a two-class competition also reads 0/255 masks as 0/1 (the
    common binary convention). ``ignore_index`` is a stored value that is neither trained on nor
    scored (mmsegmentation's ``ignore_index``). ``mode`` is how cpx writes masks (``P``: palette
    PNG, ``L``: greyscale).
    """

    values: Optional[dict[int, int]] = Field(None, description="stored pixel value -> class id")
    ignore_index: Optional[int] = Field(None, ge=0, le=255, description="stored value never trained on or scored")
    mode: Literal["P", "L"] = Field("P", description="how cpx writes masks: P (palette) or L (greyscale)")

    @field_validator("values")
    @classmethod
    def _values(cls, value: Optional[dict[int, int]]) -> Optional[dict[int, int]]:
        if value is None:
            return value
        if not value:
            raise ValueError("an empty map; leave it out when stored values are class ids")
        for stored, cid in value.items():
            if not 0 <= stored <= 65535:
                raise ValueError(f"stored value {stored} is outside 0..65535")
            if cid < 0:
                raise ValueError(f"class id {cid} (for stored value {stored}) is negative")
        return value


class Rules(_Section):
    """What the organisers allow: ensembles, pretrained weights, outside data, submissions per
    phase and per day, and whether only the final submission counts."""

    ensembles_allowed: bool = True
    pretrained_allowed: bool = True
    external_data_allowed: bool = True
    submissions_per_phase: Optional[int] = Field(None, gt=0, description="submissions allowed in the phase")
    submissions_per_day: Optional[int] = Field(None, gt=0, description="submissions allowed per day")
    only_final_counts: bool = Field(False, description="only the last submission is ranked")


class _Spec(BaseModel):
    """A plugin chosen by ``name`` with its options written beside it (``{name: x, a: 1}``)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False, defer_build=True)

    name: str = Field(description="registered name")

    @property
    def options(self) -> dict[str, Any]:
        """Everything but the keys of this model itself: the plugin's own options."""
        return dict(self.model_extra or {})


class MetricSpec(_Spec):
    """The ranked metric: a registered metric's name, its options, and the scale the organisers
    print it on (1 for 0..1, 100 for percent)."""

    name: str = Field("miou", description="registered metric")
    scale: float = Field(1.0, gt=0, description="1 for scores in 0..1, 100 for percent")


class Solution(_Section):
    """The standalone code folder some competitions want beside the predictions: ``run.py``
    taking ``--input``, ``--output``, ``--weights``, the weights and ``requirements.txt``."""

    folder: str = Field("solution", description="folder in the zip")
    weights_file: str = Field("ckpt.pth", description="weights file in that folder")
    weights_key: str = Field("state_dict", description="key the weights are stored under")
    runner: str = Field("run.py", description="the script that predicts")


class SubmissionSpec(_Spec):
    """The submission format: a registered format's name and options, and optionally the
    solution folder (``solution: true`` or its settings)."""

    name: str = Field("masks-png", description="registered submission format")
    solution: Optional[Solution] = Field(None, description="the code folder the zip must hold, if any")

    @field_validator("solution", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        return value


class Phase(_Section):
    """A phase of the competition, in the terms of a Codabench bundle: its dates (UTC), the
    submissions a participant may make in it and per day, the time the scoring may take, whether
    it takes only result submissions (no code), and the organisers' scoring program (a folder
    with ``metadata.yaml``, relative to the profile file)."""

    name: str = Field(min_length=1, description="the phase's name on Codabench")
    start: Optional[_dt.datetime] = Field(None, description="when it opens (UTC)")
    end: Optional[_dt.datetime] = Field(None, description="when it closes (UTC); none: it never closes")
    max_submissions: Optional[int] = Field(None, gt=0, description="submissions allowed in the phase")
    max_submissions_per_day: Optional[int] = Field(None, gt=0, description="submissions allowed per day")
    execution_time_limit: Optional[float] = Field(None, gt=0, description="seconds a submission's scoring may take "
                                                                          "(Codabench's default is 600)")
    accepts_only_result_submissions: bool = Field(False, description="result submissions only (no code)")
    scoring_program: Optional[str] = Field(None, description="the scoring program's folder, relative to the "
                                                             "profile file")

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: Optional[_dt.datetime]) -> Optional[_dt.datetime]:
        # Codabench reads a bundle's times as UTC
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value

    @field_validator("scoring_program")
    @classmethod
    def _program(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (not value.strip() or ".." in Path(value).parts):
            raise ValueError(f"{value!r}: a folder path without ..")
        return value

    @model_validator(mode="after")
    def _dates(self) -> "Phase":
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"phase {self.name!r} ends ({self.end:%Y-%m-%d %H:%M}) before it starts "
                             f"({self.start:%Y-%m-%d %H:%M})")
        return self

    @property
    def time_limit(self) -> float:
        """Seconds the scoring may take: the phase's limit, else Codabench's default (600)."""
        return float(self.execution_time_limit or DEFAULT_TIME_LIMIT)

    def is_open(self, now: _dt.datetime) -> bool:
        """Whether ``now`` (aware) lies in the phase."""
        return (self.start is None or self.start <= now) and (self.end is None or now < self.end)


# what Codabench gives a submission's scoring when the phase does not say
DEFAULT_TIME_LIMIT = 600.0


class RankedColumn(_Section):
    """The leaderboard column the organisers rank by: its ``column`` key (a key of the
    ``scores.json`` or ``scores.txt`` their scoring program writes) and its ``sorting``
    (``desc``: larger is better)."""

    column: str = Field(min_length=1, description="the key the scoring program writes and the leaderboard ranks")
    sorting: Literal["desc", "asc"] = Field("desc", description="desc: larger is better; asc: smaller is better")
    title: str = Field("", description="the column's title on the leaderboard")

    @property
    def greater_is_better(self) -> bool:
        return self.sorting == "desc"


def _class_ref(value: Any, classes: tuple[str, ...], what: str) -> int:
    """A class given by name or id, as its id."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a class")
    if isinstance(value, int):
        if not 0 <= value < len(classes):
            raise ValueError(f"{what}: class id {value} is outside 0..{len(classes) - 1}")
        return value
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    raise ValueError(f"{what}: {value!r} is not one of the classes ({', '.join(classes)})")


class Competition(_Section):
    """A competition profile (see the module docstring).

    Class ids are positions in ``classes``; ``flip_pairs`` are the class pairs a left-right
    mirror swaps (given by name or id), ``pair_side`` the image side the first class of each
    pair sits on in correct masks and ``midline_classes`` the classes on the midline, for label
    checks. ``size`` is the images' size (``variable``, a side, or ``[height, width]``) and
    ``train_size`` the square side cpx trains at by default. ``pixel_max`` is the largest value
    of 16-bit images (mapped linearly to 0..255); without it 16-bit images are refused.
    """

    # the parts that name plugins, checked by bind() before use
    bound_parts: ClassVar[tuple[str, ...]] = ("metric", "submission")

    name: str = Field(description="short name: lower-case letters, digits, '.', '_' or '-'")
    title: str = ""
    url: str = ""
    classes: tuple[str, ...] = Field(min_length=1, max_length=255, description="class names; ids are positions")
    palette: tuple[tuple[int, int, int], ...] = Field((), description="RGB colour of each class, for palette masks")
    channels: int = Field(3, ge=1, le=64, description="image channels the models take (bands)")
    size: Union[Literal["variable"], int, tuple[int, int]] = Field(
        "variable", description="image size: variable, a side, or [height, width]")
    train_size: Optional[int] = Field(None, gt=0, description="default training side (square canvas)")
    pixel_max: Optional[int] = Field(None, gt=0, le=65535, description="largest value of 16-bit images")
    flip_pairs: tuple[tuple[int, int], ...] = Field((), description="class pairs a left-right mirror swaps")
    pair_side: Optional[Literal["left", "right"]] = Field(None, description="side of each pair's first class")
    midline_classes: tuple[int, ...] = Field((), description="classes on the left/right midline")
    max_params: Optional[int] = Field(None, gt=0, description="trainable parameters must be fewer than this")
    layout: Layout = Field(default_factory=Layout)
    masks: MaskEncoding = Field(default_factory=MaskEncoding)
    metric: MetricSpec = Field(default_factory=MetricSpec)
    submission: SubmissionSpec = Field(default_factory=SubmissionSpec)
    rules: Rules = Field(default_factory=Rules)
    phases: tuple[Phase, ...] = Field((), description="the Codabench phases, in order (cpx init --bundle)")
    leaderboard: Optional[RankedColumn] = Field(None, description="the organisers' ranked leaderboard column")
    # Python only: a procedural generator synthesize(count, size, seed) for `cpx data synth`
    synthesize: Optional[Any] = Field(None, exclude=True, repr=False)
    # the YAML file the profile was read from (scoring programs are relative to its folder)
    source: Optional[Path] = Field(None, exclude=True, repr=False)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"{value!r}: use lower-case letters, digits, '.', '_' or '-' (at most 64)")
        return value

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen = set()
        for c in value:
            if not str(c).strip():
                raise ValueError("a class name is empty")
            if c in seen:
                raise ValueError(f"class {c!r} is listed twice")
            seen.add(c)
        return value

    @field_validator("palette")
    @classmethod
    def _palette(cls, value: tuple) -> tuple:
        for rgb in value:
            if any(not 0 <= v <= 255 for v in rgb):
                raise ValueError(f"colour {list(rgb)}: each value in 0..255")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: Any) -> Any:
        sides = (value,) if isinstance(value, int) else value if isinstance(value, tuple) else ()
        if any(s <= 0 for s in sides):
            raise ValueError(f"{value!r}: sides must be positive")
        return value

    @model_validator(mode="before")
    @classmethod
    def _class_names(cls, data: Any) -> Any:
        """Flip pairs and midline classes may name classes; they become ids."""
        if not isinstance(data, dict) or not isinstance(data.get("classes"), (list, tuple)):
            return data
        classes = tuple(str(c) for c in data["classes"])
        data = dict(data)
        pairs = data.get("flip_pairs")
        if isinstance(pairs, (list, tuple)):
            out = []
            for i, pair in enumerate(pairs):
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise ValueError(f"flip_pairs.{i}: a pair of two classes, got {pair!r}")
                out.append(tuple(_class_ref(v, classes, f"flip_pairs.{i}") for v in pair))
            data["flip_pairs"] = tuple(out)
        mid = data.get("midline_classes")
        if isinstance(mid, (list, tuple)):
            data["midline_classes"] = tuple(_class_ref(v, classes, "midline_classes") for v in mid)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "Competition":
        k = len(self.classes)
        if len(self.palette) > k:
            raise ValueError(f"palette: {len(self.palette)} colours for {k} classes")
        used: set[int] = set()
        for a, b in self.flip_pairs:
            if a == b or a in used or b in used:
                raise ValueError(f"flip_pairs: class {self.classes[a] if a in used or a == b else self.classes[b]} "
                                 "appears in more than one place")
            used |= {a, b}
        values = self.masks.values
        if values is not None:
            bad = sorted({c for c in values.values() if c >= k})
            if bad:
                raise ValueError(f"masks.values: class id {bad[0]} is outside 0..{k - 1}")
        ignore = self.masks.ignore_index
        if ignore is not None and values is None and ignore < k:
            raise ValueError(f"masks.ignore_index: {ignore} is a class id (0..{k - 1}); choose a value no class uses")
        if ignore is not None and values is not None and ignore in values:
            raise ValueError(f"masks.ignore_index: {ignore} is also a key of masks.values")
        names = [p.name for p in self.phases]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"phases: the name {twice[0]!r} is given twice")
        return self

    # --- derived facts ---------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """The square side cpx trains at on real data unless the config says otherwise:
        ``train_size``, else a square ``size``, else 512."""
        if self.train_size:
            return self.train_size
        if isinstance(self.size, int):
            return self.size
        if isinstance(self.size, tuple) and self.size[0] == self.size[1]:
            return self.size[0]
        return 512

    @property
    def fixed_size(self) -> Optional[tuple[int, int]]:
        """(height, width) every image has, or None for ``variable``."""
        if isinstance(self.size, int):
            return (self.size, self.size)
        return tuple(self.size) if isinstance(self.size, tuple) else None  # type: ignore[return-value]

    def flip_permutation(self) -> list[int]:
        """Channel order that maps logits of a mirrored image back to true classes."""
        perm = list(range(self.num_classes))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def palette_bytes(self) -> list[int]:
        """A 768-value PIL palette, padded with greys past the class list."""
        flat: list[int] = []
        for i in range(256):
            flat.extend(self.palette[i] if i < len(self.palette) else (i, i, i))
        return flat

    def check_params(self, count: int) -> Optional[str]:
        """A message when ``count`` breaks the parameter limit, else None."""
        if self.max_params is not None and count >= self.max_params:
            return (f"the model has {count:,} parameters; {self.name} requires fewer than "
                    f"{self.max_params:,}")
        return None

    def data_path(self, root: Path, part: str) -> Path:
        """``root`` joined with the layout's folder for ``part`` (one of :data:`DATA_PARTS`).

        :raises ConfigError: a validation folder the profile does not name.
        """
        folder = getattr(self.layout, part)
        if folder is None:
            raise ConfigError(f"competition {self.name} names no {part} folder (layout.{part})")
        return Path(root) / folder

    def current_phase(self, now: Optional[_dt.datetime] = None) -> Optional[Phase]:
        """The phase open at ``now`` (default: now, UTC); when none is, the next to open, else the
        last; None without phases. As on Codabench, the first phase open wins."""
        if not self.phases:
            return None
        now = now or _dt.datetime.now(_dt.timezone.utc)
        for phase in self.phases:
            if phase.is_open(now):
                return phase
        upcoming = [p for p in self.phases if p.start is not None and p.start > now]
        return upcoming[0] if upcoming else self.phases[-1]

    def phase(self, name: str) -> Optional[Phase]:
        """The phase called ``name`` (any case), or None."""
        for phase in self.phases:
            if phase.name.casefold() == str(name).casefold():
                return phase
        return None

    def scoring_program(self, phase: Optional[Phase] = None) -> Optional[Path]:
        """The folder of ``phase``'s scoring program (default: the current phase's, else the first
        phase that has one), resolved against the profile file's folder; None without one."""
        phase = phase or self.current_phase()
        if phase is None or phase.scoring_program is None:
            phase = next((p for p in self.phases if p.scoring_program), None)
        if phase is None:
            return None
        path = Path(phase.scoring_program).expanduser()
        if not path.is_absolute() and self.source is not None:
            path = Path(self.source).parent / path
        return path

    def bind(self, host: Any, parts: Optional[tuple[str, ...]] = None) -> "Competition":
        """Check ``parts`` of :attr:`bound_parts` (default all: the ``metric`` and the
        ``submission`` format) against ``host``'s registries (names and options); returns ``self``.

        :raises ConfigError: an unregistered name or options that do not validate, one line
            naming the field (``metric.class: ...``).
        """
        for field in parts or self.bound_parts:
            registry, arg = ((host.metrics, tuple(self.classes)) if field == "metric"
                             else (host.submission_formats, self))
            spec = getattr(self, field)
            try:
                entry = registry.get(spec.name)
            except Exception as exc:  # UnknownComponent, with close names
                raise ConfigError(f"{field}.name: {exc}") from None
            try:  # built once here, so a class the options name that the profile lacks is caught
                entry.create(spec.options, arg, where=field)
            except ValueError as exc:
                raise ConfigError(f"{field}.{exc}") from None
        return self


def matching_profiles(root: Path, profiles: list[Competition]) -> list[Competition]:
    """The profiles whose layout a data folder follows: its training-image folder exists and
    holds files with one of the profile's image suffixes (any case). Nothing is opened."""
    out = []
    for profile in profiles:
        folder = Path(root) / profile.layout.train_images
        if folder.is_dir() and any(profile.layout.accepts_image(p.name) for p in folder.iterdir()):
            out.append(profile)
    return out


def profile_error(exc: ValidationError, source: str) -> ConfigError:
    """A profile's validation errors as one line each, prefixed with ``source``."""
    return ConfigError("\n".join(f"{source}: {line}" for line in
                                 format_validation_error(exc, model=Competition).splitlines()))


def load_profile(path: Path, *, synthesize: Optional[Synthesizer] = None) -> Competition:
    """The :class:`Competition` of a YAML profile file; its ``name`` defaults to the file's stem
    and must match it when given.

    :raises ConfigError: unreadable or invalid YAML, a repeated key, an unknown field or a bad
        value, one line each naming the file and the field.
    """
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile is a mapping of fields (name, classes, layout, ...)")
    data.setdefault("name", path.stem)
    if data["name"] != path.stem:
        raise ConfigError(f"{path}: name: {data['name']!r} differs from the file name {path.stem!r}; "
                          "make them equal")
    try:
        return Competition.model_validate({**data, "synthesize": synthesize, "source": path.resolve()})
    except ValidationError as exc:
        raise profile_error(exc, str(path)) from None
    except ValueError as exc:  # raised by the before-validator, outside pydantic's collection
        raise ConfigError(f"{path}: {exc}") from None
