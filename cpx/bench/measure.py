"""`cpx bench`: what a recipe costs on this machine, measured rather than guessed.

One call measures, in a fresh Python process (so the memory high-water mark belongs to the
benchmark alone and nothing cached earlier flatters the numbers):

* the model's parameters and FLOPs per image (forward, and forward + backward), counted with
  ``torch.utils.flop_counter.FlopCounterMode`` at the training resolution;
* the machine's attainable matmul throughput in the chosen precision (the best of a few large
  square matmuls), the ceiling the achieved FLOP/s are compared with;
* training images/s end to end through :class:`cpx.train.loop.Trainer` (uint8 batch to device,
  augmentation, forward, loss, backward, clipping, optimizer step) and prediction images/s
  through :class:`cpx.eval.predict.Predictor` (plain, and with flip TTA);
* peak memory of training: the resident-set high-water mark (``getrusage``) on CPU,
  ``torch.cuda.max_memory_allocated`` on CUDA.

From these and the configured data it projects the time of one epoch (training plus
validation) and of the whole recipe: the cost table to plan runs with.

FLOP counts cover matmuls, convolutions and attention, the operations FlopCounterMode knows;
elementwise work (norms, activations, the loss, the optimizer) is real time but no counted
FLOPs, which is one reason small segmentation models reach a modest fraction of the ceiling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from cpx.kernel.errors import ConfigError, CpxError, RunError
from cpx.kernel.workspace import Workspace
from cpx.train.timing import sync, time_training

if TYPE_CHECKING:  # torch is imported by the functions that measure: `cpx --help` shows ACCELERATORS without it
    import torch

MATMUL_SIZE = 2048


@dataclass
class BenchRequest:
    """What ``cpx bench`` measures: a recipe with overrides, image size, batch size, precision,
    device, steps to time (after warm-up steps) and the data to use.
    """
    recipe: str
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 4  # timed training steps (and prediction batches)
    warmup: int = 2  # untimed steps first: allocator, kernel selection, oneDNN primitive caches
    isolate: bool = True  # measure in a fresh subprocess (the memory figure needs it)


@dataclass
class BenchResult:
    """Measured costs of a recipe on this machine: parameters, FLOPs per image (forward and
    training), attainable matmul FLOP/s, training and prediction images/s, peak memory (bytes),
    and the projected seconds of one epoch and of the whole recipe.
    """
    recipe: str
    model: str
    params: int
    image_size: int
    batch_size: int
    device: str
    precision: str
    threads: int
    data: str  # where the benchmark's pixels came from
    forward_flops: float  # per image at image_size
    train_flops: float  # forward + backward, per image
    attainable_flops: float  # FLOP/s of a large matmul in this precision
    train_images_per_s: float
    predict_images_per_s: float  # no TTA, at predict_size
    predict_flip_images_per_s: float  # flip TTA (two views)
    predict_size: int  # size of the images given to prediction (the competition's native size)
    peak_memory_bytes: int  # training: RSS high-water on CPU, max allocated on CUDA
    memory_kind: str
    train_images: int  # of the configured data
    val_images: int
    data_bytes: int  # what holding the configured data in memory adds (uint8 images and masks)
    epochs: int
    budget_minutes: Optional[float] = None
    notes: list[str] = field(default_factory=list)
    memory_bandwidth: float = 0.0  # bytes/s of a large tensor copy (read + write), 0 if not measured

    @property
    def train_flops_per_s(self) -> float:
        return self.train_flops * self.train_images_per_s

    @property
    def predict_flops_per_s(self) -> float:
        return self.forward_flops * self.predict_images_per_s

    @property
    def train_fraction(self) -> float:
        return self.train_flops_per_s / self.attainable_flops if self.attainable_flops else 0.0

    @property
    def predict_fraction(self) -> float:
        return self.predict_flops_per_s / self.attainable_flops if self.attainable_flops else 0.0

    @property
    def epoch_seconds(self) -> float:
        """One epoch: training images, then validation (scored like a plain prediction)."""
        train = self.train_images / self.train_images_per_s if self.train_images_per_s else 0.0
        val = self.val_images / self.predict_images_per_s if self.predict_images_per_s else 0.0
        return train + val

    @property
    def recipe_seconds(self) -> float:
        """All configured epochs (patience may stop earlier), capped by a time budget."""
        total = self.epochs * self.epoch_seconds
        return min(total, self.budget_minutes * 60) if self.budget_minutes else total

    def to_dict(self) -> dict:
        """JSON-ready form."""
        out = asdict(self)
        for name in ("train_flops_per_s", "predict_flops_per_s", "train_fraction", "predict_fraction",
                     "epoch_seconds", "recipe_seconds"):
            out[name] = getattr(self, name)
        return out


# --------------------------------------------------------------------------------------------
# Projections to accelerators that are not here


@dataclass(frozen=True)
class Accelerator:
    """A GPU's peak dense tensor throughput in bf16/fp16 (FLOP/s), from its vendor's datasheet."""

    name: str
    peak_flops: float
    bandwidth: float  # memory bytes/s
    source: str


ACCELERATORS = {
    "t4": Accelerator("NVIDIA T4", 65e12, 320e9, "NVIDIA T4 datasheet: 65 TFLOPS mixed precision, 320 GB/s"),
    "v100": Accelerator("NVIDIA V100 SXM2", 125e12, 900e9, "NVIDIA V100 datasheet: 125 TFLOPS tensor, 900 GB/s"),
    "l4": Accelerator("NVIDIA L4", 121e12, 300e9, "NVIDIA L4 datasheet: 121 TFLOPS FP16/BF16 dense, 300 GB/s"),
    "a100": Accelerator("NVIDIA A100 40GB", 312e12, 1555e9,
                        "NVIDIA A100 datasheet: 312 TFLOPS BF16/FP16 dense, 1,555 GB/s"),
    "h100": Accelerator("NVIDIA H100 SXM", 989e12, 3350e9, "NVIDIA H100 datasheet: 989 TFLOPS BF16 dense, 3.35 TB/s"),
}


@dataclass
class Projection:
    """A measured recipe's times on an accelerator that is not here, assuming it reaches the same
    fraction of its peak as the measured device reached of its matmul ceiling (``fraction``,
    training and prediction separately): seconds per epoch and for ``epochs`` epochs."""

    accelerator: Accelerator
    train_fraction: float
    predict_fraction: float
    epoch_seconds: float
    epochs: int
    total_seconds: float
    bound: str = "compute"  # which bound decided: compute (FLOPs) or memory (bandwidth)

    def to_dict(self) -> dict:
        return {**asdict(self), "accelerator": asdict(self.accelerator)}


def project_check(key: str, fraction: Optional[float] = None) -> Accelerator:
    """The accelerator ``key`` names, after checking ``fraction``.

    :raises ConfigError: an unknown accelerator, or a fraction outside (0, 1].
    """
    accel = ACCELERATORS.get(key.lower())
    if accel is None:
        raise ConfigError(f"--gpu {key}: unknown; choose from {', '.join(sorted(ACCELERATORS))}")
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"--gpu-fraction {fraction}: must be in (0, 1]")
    return accel


def project(result: BenchResult, key: str, epochs: Optional[int] = None, fraction: Optional[float] = None) -> Projection:
    """Project ``result`` onto the accelerator ``key`` (see :data:`ACCELERATORS`):

    A roofline in two parts; the slower one decides (``bound``):

    * compute: ``seconds per training image = train FLOPs per image / (peak FLOP/s x fraction)``,
      the same for prediction with the forward FLOPs, and an epoch as in
      :attr:`BenchResult.epoch_seconds`; ``fraction`` defaults to the share of the matmul
      ceiling measured here;
    * memory: the epoch measured here scaled by the memory bandwidths, measured here (a large
      tensor copy) against the GPU's datasheet figure. Small depthwise models spend much of
      their time moving activations (depthwise, norm and elementwise layers), which this bound
      covers.

    With an explicit ``fraction`` only the compute part is used. Kernel launch overhead and data
    loading are in neither, so read the result as a lower bound of the time. ``epochs``
    defaults to the recipe's.

    :raises ConfigError: an unknown accelerator, or a fraction outside (0, 1].
    """
    accel = project_check(key, fraction)
    train_fraction = fraction if fraction is not None else result.train_fraction
    predict_fraction = fraction if fraction is not None else result.predict_fraction
    if train_fraction <= 0 or predict_fraction <= 0:
        raise ConfigError("the measurement reached no throughput to project from; give --gpu-fraction")
    train = result.train_images * result.train_flops / (accel.peak_flops * train_fraction)
    val = result.val_images * result.forward_flops / (accel.peak_flops * predict_fraction)
    compute, bound = train + val, "compute"
    if result.memory_bandwidth > 0 and fraction is None:
        memory = result.epoch_seconds * result.memory_bandwidth / accel.bandwidth
        if memory > compute:
            compute, bound = memory, "memory"
    n = epochs if epochs is not None else result.epochs
    return Projection(accel, train_fraction, predict_fraction, compute, n, n * compute, bound)


# --------------------------------------------------------------------------------------------
# Measurements (each usable on its own)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    # torch's formula counts the weight gradient of a grouped convolution as if it were dense
    # (groups times too much: 100x for a depthwise conv); divide that term by the groups
    from torch.utils.flop_counter import conv_backward_flop

    full = conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                              _output_padding, groups, output_mask, out_val=out_shape)
    if groups == 1 or not output_mask[1]:
        return full
    weight_part = full - conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                                            transposed, _output_padding, groups, [output_mask[0], False, False],
                                            out_val=out_shape)
    return full - weight_part + weight_part // groups


def _flop_formulas() -> dict:
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    formulas = {aten.convolution_backward: _conv_backward_flops}
    # the CPU flash-attention kernels are not in torch's table
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v))
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *args, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v))
    return formulas


def count_flops(model: torch.nn.Module, image_size: int, device: torch.device,
                channels: int = 3) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs for one ``channels x S x S`` image, in training mode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, channels, image_size, image_size, device=device)
    was_training = model.training
    model.train()
    with FlopCounterMode(display=False, custom_mapping=_flop_formulas()) as fwd:
        out = model(x)
    with FlopCounterMode(display=False, custom_mapping=_flop_formulas()) as bwd:
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return float(fwd.get_total_flops()), float(fwd.get_total_flops() + bwd.get_total_flops())


def attainable_matmul_flops(device: torch.device, precision: str, size: int = MATMUL_SIZE, repeats: int = 4) -> float:
    """FLOP/s of the best of ``repeats`` ``size``-square matmuls in ``precision``."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i:  # the first call pays for packing and kernel selection
            best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def copy_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 3) -> float:
    """Bytes/s of the best of ``repeats`` copies of a ``megabytes`` float32 tensor, counting the
    bytes read and written (STREAM's copy kernel, through torch)."""
    import torch

    n = megabytes * 2 ** 20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if i:  # the first call pays for page faults
            best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best


# --------------------------------------------------------------------------------------------
# The benchmark


def _bench_data(config, competition, count: int, size: int, seed: int = 0):
    """``count`` training pairs at ``size``: real ones when a data folder is configured."""
    import torch

    from cpx import data as datalib

    if config.data.path:
        root = Path(config.data.path).expanduser()
        names = datalib.train_names(root, competition)
        train, _ = datalib.split_names(names, config.data.val_fraction, config.data.split_seed)
        picked = (train * (count // max(1, len(train)) + 1))[:count]
        images, masks = datalib.load_dataset(root, competition, picked, size)
        return images, masks, f"{root} ({count} images)"
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, competition.channels, size, size), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, competition.num_classes, (count, size, size), dtype=torch.uint8, generator=g)
    return images, masks, "random pixels (no data folder configured)"


def data_counts(config, competition, workspace: Workspace) -> tuple[int, int]:
    """(train, validation) images of the configured data, without decoding any."""
    from cpx import data as datalib
    if config.data.path:
        root = Path(config.data.path).expanduser()
        if not root.is_dir():
            from cpx.kernel.errors import DataError

            raise DataError(f"data folder {root} does not exist")
        names = datalib.train_names(root, competition)
    else:
        names = [str(i) for i in range(config.data.synthetic_count)]
    train, val = datalib.split_names(names, config.data.val_fraction, config.data.split_seed)
    return len(train), len(val)


# fewer timed steps than this get a note that the figures are rough
FEW_STEPS = 4


# what measure() does, in order: the stages its progress callback names
STAGES = ("building the model", "counting FLOPs", "measuring the machine", "warm-up steps", "timed training steps",
          "timing prediction", "counting the data")
# a line the measuring process writes on stderr for each stage (the rest of stderr is its log)
_PROGRESS_LINE = "cpx-bench-progress "
# the measuring process's exit status for a cpx error (bad data or config), whose message is its last line
_USER_ERROR = 3

Progress = Optional[Callable[[str, int, int], None]]


def measure(config, host, workspace: Workspace, steps: int = 4, warmup: int = 2,
            progress: Progress = None) -> BenchResult:
    """Every figure of a :class:`BenchResult` for a resolved config, in this process.
    ``progress(stage, done, total)`` is called as each of :data:`STAGES` starts."""
    import torch

    def starting(stage: str) -> None:
        if progress:
            progress(stage, STAGES.index(stage), len(STAGES))

    from cpx.kernel.device import count_params, resolve_device, resolve_precision
    from cpx.train.run import build_components

    starting("building the model")
    competition = host.competition(config.competition)
    device = resolve_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    size, batch = int(config.data.image_size), int(config.train.batch_size)
    model, loss_fn, augment = build_components(config, host, competition)
    params = count_params(model)
    model = model.to(device)
    starting("counting FLOPs")
    forward_flops, train_flops = count_flops(model, size, device, competition.channels)
    starting("measuring the machine")
    attainable = attainable_matmul_flops(device, precision)
    bandwidth = copy_bandwidth(device)

    starting("warm-up steps")
    images, masks, source = _bench_data(config, competition, batch * (warmup + steps), size)
    train_ips, (peak, kind) = time_training(config, model, loss_fn, augment, images, masks, warmup, device,
                                              precision, lambda: starting("timed training steps"))
    del images, masks

    starting("timing prediction")
    predict_size = int(competition.image_size or size)
    rates = _time_prediction(model, competition, size, predict_size, batch, steps, device, precision)

    starting("counting the data")
    n_train, n_val = data_counts(config, competition, workspace)
    notes = _notes(rates, steps, batch, config.data.path)
    if progress:
        progress("measured", len(STAGES), len(STAGES))
    return BenchResult(
        recipe=config.recipe, model=config.model.name, params=params, image_size=size, batch_size=batch,
        device=str(device), precision=precision, threads=torch.get_num_threads(), data=source,
        forward_flops=forward_flops, train_flops=train_flops, attainable_flops=attainable, memory_bandwidth=bandwidth,
        train_images_per_s=train_ips, predict_images_per_s=rates[0], predict_flip_images_per_s=rates[1],
        predict_size=predict_size, peak_memory_bytes=peak, memory_kind=kind, train_images=n_train,
        val_images=n_val, data_bytes=(n_train + n_val) * 4 * size * size, epochs=config.train.epochs,
        budget_minutes=config.train.budget_minutes, notes=notes)


def _time_prediction(model, competition, size: int, predict_size: int, batch: int, steps: int, device,
                     precision: str) -> list[float]:
    """Prediction images/s without and with flip TTA, ``[plain, flip]``: ``steps`` batches of
    random ``predict_size`` pictures after one untimed batch, run by the model at ``size``."""
    import torch

    from cpx.eval.predict import Member, Predictor

    g = torch.Generator().manual_seed(1)
    pictures = list(torch.randint(0, 256, (batch * (1 + steps), competition.channels, predict_size, predict_size),
                                  dtype=torch.uint8, generator=g))
    rates = []
    for tta in ((), ("flip",)):
        predictor = Predictor([Member(model, size)], competition, tta=tta, device=device, precision=precision)
        predictor.predict(pictures[:batch])
        sync(device)
        t0 = time.perf_counter()
        for a in range(batch, len(pictures), batch):
            predictor.predict(pictures[a:a + batch])
        sync(device)
        rates.append(batch * steps / (time.perf_counter() - t0))
    return rates


def _notes(rates: list[float], steps: int, batch: int, data_path) -> list[str]:
    """What to keep in mind when reading the figures: noisy timings, or random pixels."""
    notes = []
    if rates[1] >= rates[0]:
        notes.append(f"flip TTA (two views) timed no slower than plain prediction ({rates[1]:.1f} against "
                     f"{rates[0]:.1f} images/s): the timings are noise on this machine; measure again with "
                     "more --steps before planning with them")
    elif steps < FEW_STEPS:
        notes.append(f"timed over {steps} step{'s' if steps != 1 else ''} of {batch} images: on a shared "
                     f"machine such figures can be off several times over; --steps {FEW_STEPS} or more to plan with")
    if not data_path:
        notes.append("no data folder: pixels are random and the data counts are the synthetic set's; "
                     "pass --data DIR for the real cost table")
    return notes


def bench_config(request: BenchRequest, workspace: Workspace, host):
    """The resolved config a benchmark measures. With no data folder and no explicit size, the
    competition's native size is benchmarked rather than the small synthetic images'."""
    from cpx.kernel.config import build_config, load_recipe

    config, _ = build_config(request.recipe, request.overrides, workspace.experiments_dir, host)
    raw = load_recipe(request.recipe, workspace.experiments_dir)
    size_given = "data.image_size" in request.overrides or (raw.get("data") or {}).get("image_size")
    if not config.data.path and not size_given:
        config.data.image_size = host.competition(config.competition).image_size or config.data.image_size
    return config


def run_bench(request: BenchRequest, workspace: Workspace, host, progress: Progress = None,
              starting: Optional[Callable[[Any], None]] = None) -> BenchResult:
    """Benchmark a recipe; in a fresh subprocess unless ``request.isolate`` is off.
    ``progress(stage, done, total)`` follows :func:`measure`'s stages, wherever it runs;
    ``starting(config)`` hears the resolved config once the request and its data folder are
    checked, before the measuring starts.

    :raises ConfigError: bad steps, recipe or overrides. :raises DataError: a missing or
        malformed data folder (checked here, before any measuring). :raises RunError: the
        measuring process failed (its last line).
    """
    if request.steps < 1 or request.warmup < 1:
        raise ConfigError("--steps and --warmup must be at least 1")
    config = bench_config(request, workspace, host)
    data_counts(config, host.competition(config.competition), workspace)  # a bad data folder fails now
    if starting:
        starting(config)
    if not request.isolate:
        return measure(config, host, workspace, request.steps, request.warmup, progress)
    spec = {"config": config.model_dump(mode="json"), "workspace": str(workspace.root),
            "steps": request.steps, "warmup": request.warmup}
    child = subprocess.Popen([sys.executable, "-m", "cpx.bench.measure"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "CPX_WORKSPACE": str(workspace.root)})
    child.stdin.write(json.dumps(spec))
    child.stdin.close()
    log = []
    for line in child.stderr:  # the child's stdout is one line of JSON at the end: it cannot fill its pipe
        if line.startswith(_PROGRESS_LINE):
            if progress:
                progress(*json.loads(line[len(_PROGRESS_LINE):]))
        else:
            log.append(line)
    lines = child.stdout.read().strip().splitlines()
    code = child.wait()
    if code != 0 or not lines:
        tail = ("".join(log).strip().splitlines() or ["(no output)"])[-1]
        if code == _USER_ERROR:  # the child's one-line message, as cpx words it
            raise RunError(tail)
        raise RunError(f"the benchmark process failed (exit code {code}): {tail}")
    data = json.loads(lines[-1])
    fields = set(BenchResult.__dataclass_fields__)
    return BenchResult(**{k: v for k, v in data.items() if k in fields})


def _child() -> None:
    from cpx.kernel.config import validate
    from cpx.kernel.manager import create_plugin_host

    spec = json.loads(sys.stdin.read())
    workspace = Workspace(Path(spec["workspace"]))
    host = create_plugin_host(plugin_dirs=workspace.plugin_dirs())
    def report(stage: str, done: int, total: int) -> None:
        print(_PROGRESS_LINE + json.dumps([stage, done, total]), file=sys.stderr, flush=True)

    try:
        result = measure(validate(spec["config"]), host, workspace, spec["steps"], spec["warmup"], report)
    except CpxError as exc:  # a bad file met while measuring: its one line, for run_bench to pass on
        print(exc, file=sys.stderr)
        sys.exit(_USER_ERROR)
    print(json.dumps(result.to_dict()))


# --------------------------------------------------------------------------------------------
# A factory for scripts that take "module:callable" (e.g. the reference training loop)


def recipe_model(recipe: Optional[str] = None) -> torch.nn.Module:
    """The model of ``recipe`` (default: ``$CPX_BENCH_RECIPE`` or msf-lmsa), built as cpx trains it."""
    from cpx.kernel.config import build_config
    from cpx.kernel.manager import create_plugin_host

    workspace = Workspace.current()
    host = create_plugin_host(plugin_dirs=workspace.plugin_dirs())
    config, _ = build_config(recipe or os.environ.get("CPX_BENCH_RECIPE", "msf-lmsa"), {},
                             workspace.experiments_dir, host)
    from cpx.runs.handle import build_model

    return build_model(host, config.model.name, config.model.options, host.competition(config.competition))


if __name__ == "__main__":
    _child()
