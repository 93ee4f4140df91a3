"""Experiment configs: pydantic sections composed from recipes, overrides and plugin options.

A recipe is a YAML mapping with the sections below; ``base: other-recipe`` inherits from
another recipe. Built-in recipes ship in ``cpx_plugins.recipes`` (``plugins/cpx_plugins/recipes/``);
YAML files in the workspace's ``experiments/`` folder add to them or override them by name.
"""

from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cpx.kernel.errors import ConfigError
from cpx.kernel.registry import format_validation_error
from cpx.kernel.yamlfile import parse_yaml


class Section(BaseModel):
    # unknown keys are typos; inf and nan are never meaningful settings (``--lr inf`` trained to NaN)
    """Base of every config section: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, defer_build=True)


class Component(Section):
    """A plugin component chosen by registered ``name`` with its own ``options``."""

    name: str = Field(description="registered name of the plugin component")
    options: dict[str, Any] = Field(default_factory=dict, description="the component's own options")


class OptimizerConfig(Section):
    """The optimizer and its hyper-parameters."""

    name: Literal["adamw", "sgd"] = Field("adamw", description="optimizer")
    lr: float = Field(8e-4, gt=0, le=10, description="peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="decoupled weight decay")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="AdamW betas, each in [0, 1)")
    momentum: float = Field(0.9, ge=0, description="SGD momentum")


class ScheduleConfig(Section):
    """The learning-rate schedule: linear warm-up, then cosine (or constant) down to ``min_lr``."""

    name: Literal["cosine", "constant"] = Field("cosine", description="learning-rate schedule after warm-up")
    warmup_epochs: int = Field(5, ge=0, description="linear warm-up length in epochs")
    min_lr: float = Field(1e-6, ge=0, description="learning rate at the end of the cosine")


class DataConfig(Section):
    """Where the data comes from, the training resolution, the split and the cache."""

    path: Optional[str] = Field(None, description="competition data folder; empty means the competition's synthetic data")
    image_size: Optional[int] = Field(None, gt=0, description="training resolution (square); empty means the competition's native size")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of labelled images held out for validation")
    split_seed: int = Field(42, description="seed of the train/validation split")
    synthetic_count: int = Field(120, gt=1, description="images generated when no data folder is given")
    synthetic_size: int = Field(128, gt=7, description="size of generated images")
    synthetic_seed: int = Field(0, description="seed of the synthetic generator")
    cache: bool = Field(True, description="keep a decoded uint8 cache file under experiments/cache")
    exclude_suspect: bool = Field(False, description="train without the training masks whose left/right classes "
                                                     "sit on the wrong side (cpx data check --labels)")
    fix_suspect: bool = Field(False, description="train on those masks with their reversed left/right pairs "
                                                 "swapped back")
    suspect_min_confidence: float = Field(0.5, ge=0, le=1, description="the label-check confidence from which "
                                                                       "exclude_suspect / fix_suspect act on a mask")

    @model_validator(mode="after")
    def _one_label_policy(self) -> "DataConfig":
        if self.exclude_suspect and self.fix_suspect:
            raise ValueError("exclude_suspect and fix_suspect: choose one")
        return self


class TrainConfig(Section):
    """The training loop: epochs, batch size, precision, device, clipping, early stopping,
    seed, validation cadence, an optional wall-clock budget and an optional weight EMA.
    """

    epochs: int = Field(300, gt=0, description="maximum number of epochs")
    batch_size: int = Field(32, gt=0, description="images per optimizer step")
    micro_batch: Optional[int] = Field(None, gt=0, description="forward and backward each batch in chunks of this many "
                                                               "images, gradients summed before the one step: activation "
                                                               "memory falls with the chunk, but batch norm and a batch "
                                                               "Dice see each chunk alone; empty: whole batches")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto = bf16 where the CPU or GPU supports it, else fp32")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    grad_clip: Optional[float] = Field(1.0, gt=0, description="max gradient norm; empty disables")
    patience: Optional[int] = Field(20, gt=0, description="stop after this many validations without improvement")
    seed: int = Field(0, description="seed for initialisation, shuffling and augmentation")
    val_every: int = Field(1, gt=0, description="validate every N epochs")
    channels_last: bool = Field(True, description="use channels-last memory format for convolutions")
    compile: Union[Literal["auto"], bool] = Field(
        "auto", description="train through torch.compile (inductor), falling back to eager if compiling fails; "
                            "auto = on CUDA only (on a CPU it measured slower)")
    budget_minutes: Optional[float] = Field(None, gt=0, description="fit the schedule to this wall-clock budget")
    budget_variant: Optional[str] = Field(None, description="the budget_variants entry trained (chosen by a budget run, "
                                                            "or set to pin one); empty: the recipe as written")
    stop_after: Optional[int] = Field(None, gt=0, description="end after this many epochs while keeping the "
                                                             "learning-rate schedule of train.epochs (a refit "
                                                             "stops where its parent's best epoch was)")
    ema: Optional[float] = Field(None, gt=0, lt=1, description="decay of an exponential moving average of the weights "
                                                               "(e.g. 0.999), validated beside the raw weights; best.pt "
                                                               "keeps whichever scored best; empty disables")


class BudgetVariant(Section):
    """One way to spend a wall-clock budget (a resolution, a width): config changes and the
    scores recorded for it. ``curve`` holds ``[images, score]`` points: a run whose schedule was
    fitted to that many training images (epochs x training images) reached that best validation
    score (on the competition metric's scale); ``source`` says where they were measured."""

    name: str = Field(description="what --set train.budget_variant=NAME pins, e.g. 256px")
    set: dict[str, Any] = Field(description="dotted config keys and values, as --set takes them")
    curve: list[tuple[float, float]] = Field(min_length=1, description="[training images seen, best val score] "
                                                                       "points of budget-fitted runs")
    source: str = Field("", description="where and how the curve was measured")

    @field_validator("curve")
    @classmethod
    def _increasing(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        images = [p[0] for p in points]
        if any(n <= 0 for n in images) or images != sorted(set(images)):
            raise ValueError("images must be positive and strictly increasing")
        return points


class ExperimentConfig(Section):
    """A fully resolved experiment: competition, model, loss, augmentation, optimizer, schedule,
    data and training settings. Every run writes its own as ``config.yaml``.
    """

    recipe: str = Field("", description="the recipe this config came from")
    description: str = Field("", description="what the recipe is for")
    competition: str = Field(description="registered competition profile")
    model: Component
    loss: Component
    augmentation: Component = Field(default_factory=lambda: Component(name="none"))
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    budget_variants: list[BudgetVariant] = Field(default_factory=list, description="what a --budget run may "
                                                 "choose between, by this machine's pace (cpx.train.variants)")


# --- recipes ---------------------------------------------------------------------------


def builtin_recipes() -> dict[str, str]:
    """Recipe name -> YAML text of every recipe shipped with cpx."""
    out = {}
    for item in resources.files("cpx_plugins.recipes").iterdir():
        if item.name.endswith(".yaml"):
            out[item.name[:-5]] = item.read_text()
    return out


def workspace_recipes(experiments_dir: Path) -> dict[str, Path]:
    """Recipe name -> YAML file for every ``*.yaml`` in the workspace's ``experiments/``."""
    if not experiments_dir.is_dir():
        return {}
    return {p.stem: p for p in sorted(experiments_dir.glob("*.yaml"))}


def list_recipes(experiments_dir: Path) -> dict[str, str]:
    """Recipe name -> where it comes from (``builtin`` or a file path)."""
    names = {name: "builtin" for name in builtin_recipes()}
    names.update({name: str(path) for name, path in workspace_recipes(experiments_dir).items()})
    return dict(sorted(names.items()))


def _parse_yaml(text: str, source: str) -> dict:
    data = parse_yaml(text, source)  # a key given twice is refused, naming both lines
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of sections")
    return data


def load_recipe(ref: str, experiments_dir: Path, _seen: tuple = ()) -> dict:
    """The raw (unvalidated) mapping of a recipe name or YAML path, with ``base`` applied."""
    path = Path(ref)
    if ref.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"recipe file {ref} does not exist")
        data, name = _parse_yaml(path.read_text(), str(path)), path.stem
    else:
        local = workspace_recipes(experiments_dir)
        shipped = builtin_recipes()
        if ref in local:
            data = _parse_yaml(local[ref].read_text(), str(local[ref]))
        elif ref in shipped:
            data = _parse_yaml(shipped[ref], f"recipe {ref}")
        else:
            names = sorted(set(local) | set(shipped))
            close = difflib.get_close_matches(ref, names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"unknown recipe {ref!r}; {hint}known: {', '.join(names)}")
        name = ref
    base = data.pop("base", None)
    if base:
        if base in _seen:
            raise ConfigError(f"recipe {name}: base chain loops through {base}")
        parent = load_recipe(base, experiments_dir, _seen + (name,))
        data = deep_merge(parent, data)
    data.setdefault("recipe", name)
    data["recipe"] = name
    return data


COMPONENTS = ("model", "loss", "augmentation")


def forget_switched_options(data: dict, names: dict[str, Any]) -> dict:
    """``data`` (a new copy) without the options of each component that ``names`` (section ->
    new component name) switches to another component.

    Options belong to the component they were written for: a recipe's ``dropout`` for
    ``msf-lmsa`` means nothing to a third-party model. So a recipe whose ``base`` names another
    model, and ``--set model.name=...``, start the new component from its own defaults; options
    given together with the new name (the recipe's ``options:``, ``--set model.options.width=4``)
    are applied after.
    """
    out = copy.deepcopy(data)
    for section in COMPONENTS:
        old = out.get(section)
        if section in names and isinstance(old, dict) and old.get("name") != names[section]:
            old["options"] = {}
    return out


def _new_names(update: dict) -> dict[str, Any]:
    return {s: update[s]["name"] for s in COMPONENTS if isinstance(update.get(s), dict) and "name" in update[s]}


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` updated by ``update`` recursively (a new copy); a component's ``options`` are
    updated key by key, after the base's are dropped when ``update`` switches the component
    (:func:`forget_switched_options`).
    """
    out = forget_switched_options(base, _new_names(update))
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            # an option's own value is never merged into: a dict given for it replaces the old one
            out[key] = {**out[key], **copy.deepcopy(value)} if key == "options" else deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """``train.epochs=3`` -> ("train.epochs", 3); values are read as YAML scalars or lists."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


# `cpx train`'s shortcut options (also `cpx sweep`'s factor names and the notebook API's
# keywords) -> config key path
SHORTCUTS = {
    "dice": "loss.options.dice",
    "ce": "loss.options.ce",
    "lr": "optimizer.lr",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "image_size": "data.image_size",
    "seed": "train.seed",
    "data": "data.path",
    "device": "train.device",
    "precision": "train.precision",
    "budget_minutes": "train.budget_minutes",
    "competition": "competition",
}


def merge_overrides(assignments: Iterable[str], shortcuts: dict[str, Any]) -> dict[str, Any]:
    """Overrides from ``--set key=value`` texts and shortcut options (key path -> value, None
    for a shortcut not given).

    :raises ConfigError: a malformed assignment, or one key given two different values by two
        ``--set`` or by a shortcut and a ``--set`` (neither silently wins).
    """
    overrides: dict[str, Any] = {}
    given: dict[str, str] = {}
    for text in assignments:
        key, value = parse_assignment(text)
        if key in overrides and overrides[key] != value:
            raise ConfigError(f"{key}: set twice, by --set {given[key]} and by --set {text.strip()}; give one")
        overrides[key], given[key] = value, text.strip()
    for key, value in shortcuts.items():
        if value is None:
            continue
        if key in overrides and overrides[key] != value:
            raise ConfigError(f"{key}: set twice, to {overrides[key]!r} by --set and to {value!r} by its "
                              "shortcut option; give one")
        overrides[key] = value
    return overrides


def set_path(data: dict, key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, creating sections.

    :raises ConfigError: a part of the path is a value, not a section.
    """
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            if part in node and node[part] is not None:
                raise ConfigError(f"{key}: {part} is not a section")
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """``data`` with each ``key path -> value`` of ``overrides`` set (a new copy); switching a
    component by name drops the options meant for the old one first
    (:func:`forget_switched_options`), so ``--set model.name=tiny --set model.options.width=4``
    gives ``tiny`` exactly ``width: 4``.
    """
    names = {s: overrides[f"{s}.name"] for s in COMPONENTS if f"{s}.name" in overrides}
    out = forget_switched_options(data, names)
    for key, value in overrides.items():
        set_path(out, key, value)
    return out


def validate(data: dict) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of ``data``.

    :raises ConfigError: one line per field that does not validate, naming its key path.
    """
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model=ExperimentConfig)) from None


def resolve(config: ExperimentConfig, host) -> ExperimentConfig:
    """Fill every component's options with validated defaults from its plugin."""
    competition = host.competition(config.competition)
    resolved = config.model_copy(deep=True)
    for section, registry in (("model", host.models), ("loss", host.losses),
                              ("augmentation", host.augmentations)):
        comp = getattr(resolved, section)
        options = registry.get(comp.name).parse_options(comp.options, where=f"{section}.options")
        comp.options = options.model_dump(mode="json")
    if resolved.data.image_size is None:
        resolved.data.image_size = competition.image_size if resolved.data.path else resolved.data.synthetic_size
    lr, floor = resolved.optimizer.lr, resolved.schedule.min_lr
    if resolved.schedule.name == "cosine" and lr < floor:
        raise ConfigError(f"optimizer.lr: {lr:g} is below schedule.min_lr {floor:g}, so the cosine schedule would "
                          f"climb instead of decay; raise --lr, or lower schedule.min_lr (--set schedule.min_lr=0)")
    return resolved


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def config_diff(config: ExperimentConfig, baseline: ExperimentConfig) -> dict[str, Any]:
    """Flat ``{"loss.options.dice": 1.5}`` of what differs from the recipe."""
    now, before = flatten(config.model_dump(mode="json")), flatten(baseline.model_dump(mode="json"))
    return {k: v for k, v in now.items() if before.get(k, object()) != v}


def build_config(recipe: str, overrides: dict[str, Any], experiments_dir: Path, host) -> tuple[ExperimentConfig, dict]:
    """The resolved config of ``recipe`` with ``overrides`` applied, and its diff to the recipe."""
    raw = load_recipe(recipe, experiments_dir)
    baseline = resolve(validate(raw), host)
    _check_override_paths(overrides, baseline)
    config = resolve(validate(apply_overrides(raw, overrides)), host)
    return config, config_diff(config, baseline)


def _check_override_paths(overrides: dict[str, Any], baseline: ExperimentConfig) -> None:
    """Refuse an override whose key names no section of the config but is the last part of
    known keys (``--set flip=0`` for ``augmentation.options.flip``), naming them.

    :raises ConfigError: ``KEY: unknown field; did you mean A or B?``.
    """
    known = flatten(baseline.model_dump(mode="json"))
    for key in overrides:
        if key in known or key.split(".")[0] in ExperimentConfig.model_fields:
            continue
        leaf = key.rpartition(".")[2]
        matches = sorted(k for k in known if k.rpartition(".")[2] == leaf)
        if matches:
            raise ConfigError(f"{key}: unknown field; did you mean {' or '.join(matches[:3])}?")
