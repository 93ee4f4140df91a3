"""Built-in segmentation models: ``msf``, ``msf-lmsa`` (MicroSegFormer), ``unet`` and the
compact DeepLabV3+-style CNNs ``dlv3p`` and ``dlv3p-s``.

The networks live in self-contained files (``msf_arch.py``, ``unet_arch.py``, ``dlv3p_arch.py``) that import
only torch, so a submission can ship one verbatim. This module adds what cpx needs around
them: validated options, a factory and registration.

Each model is one row of :data:`MODELS`: its name, options, arch file and builder, and
description, declared once; :func:`create_model` builds any of them. (Each model's parameter
count at its defaults, 19 classes and 3 bands is pinned in ``tests/plugins/test_models.py``.)

Standalone source
-----------------
Every model takes ``in_channels`` (keyword, default 3), the competition's image bands, and
builds its first convolution for that many. Each band is normalised before the stem: the first
three as RGB with ImageNet's statistics, any other with their average (``_band_statistics`` in
the arch files).

Every model :func:`create_model` returns carries ``model.cpx_source``, a tuple
``(arch_file, builder_name, kwargs)``: the absolute path of the arch file, the name of the
builder function in it and the keyword arguments (JSON-friendly: lists, numbers, booleans)
that rebuild the same network, so a packaging step can write::

    from <copied arch file> import <builder_name>
    model = <builder_name>(**kwargs)
    model.load_state_dict(weights)

The kwargs hold ``in_channels`` only when it is not 3, so an RGB model writes the same
``model.json`` as before the keyword existed, and kwargs saved then rebuild it unchanged.

``ARCH_SOURCES`` maps each model name to ``(arch_file, builder_name)`` for callers that
need the file before building a model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cpx.kernel.hookspecs import hookimpl

from . import dlv3p_arch, msf_arch, unet_arch

Quad = tuple[int, int, int, int]
Pair = tuple[int, int]


def _plain(value: Any) -> Any:
    # tuples become lists so the kwargs survive a JSON or YAML round trip unchanged
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _with_bands(kwargs: dict, in_channels: int) -> dict:
    # RGB, the builders' default, stays out of the kwargs (see the module docstring)
    if in_channels != 3:
        kwargs["in_channels"] = in_channels
    return kwargs


class MSFOptions(BaseModel):
    """MicroSegFormer without the LMSA block."""

    model_config = ConfigDict(extra="forbid")

    embed_dims: Quad = Field((32, 64, 128, 160), description="Channel width of each of the 4 encoder stages (1/4, 1/8, 1/16, 1/32 resolution).")
    depths: Quad = Field((2, 2, 2, 2), description="Transformer blocks per encoder stage.")
    num_heads: Quad = Field((1, 2, 4, 5), description="Attention heads per stage; each must divide that stage's width.")
    mlp_ratios: tuple[float, float, float, float] = Field((4, 4, 4, 2), description="Mix-FFN hidden width as a multiple of the stage width.")
    sr_ratios: Quad = Field((8, 4, 2, 1), description="Spatial reduction of keys/values per stage (1 = full attention).")
    decoder_dim: int = Field(112, ge=8, description="Common channel width of the all-MLP decoder.")
    dropout: float = Field(0.15, ge=0.0, lt=1.0, description="Channel dropout right before the classifier (the reference recipe uses 0.15).")
    transformer_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on attention weights and on MLP/attention outputs inside the encoder.")
    drop_path: float = Field(0.0, ge=0.0, lt=1.0, description="Stochastic-depth rate of the last encoder block, rising linearly from 0 at the first.")

    @model_validator(mode="after")
    def _check_shapes(self):
        for i, (dim, heads) in enumerate(zip(self.embed_dims, self.num_heads)):
            if dim < 1 or heads < 1 or dim % heads:
                raise ValueError(f"stage {i + 1}: embed_dims {dim} must be a positive multiple of num_heads {heads}")
        if min(self.depths) < 1 or min(self.sr_ratios) < 1 or min(self.mlp_ratios) <= 0:
            raise ValueError("depths and sr_ratios must be >= 1 and mlp_ratios > 0")
        return self


class MSFLMSAOptions(MSFOptions):
    """MicroSegFormer with the LMSA decoder block."""

    lmsa_kernels: tuple[int, ...] = Field((3, 5, 7), description="Kernel sizes of the parallel depthwise convolutions in the LMSA block (odd).")
    lmsa_se_reduction: int = Field(4, ge=1, description="Squeeze-excitation reduction factor of the LMSA channel attention.")

    @model_validator(mode="after")
    def _check_kernels(self):
        if not self.lmsa_kernels or any(k < 1 or k % 2 == 0 for k in self.lmsa_kernels):
            raise ValueError(f"lmsa_kernels must be odd sizes >= 1, got {list(self.lmsa_kernels)}")
        return self


class UNetOptions(BaseModel):
    """Small U-Net baseline."""

    model_config = ConfigDict(extra="forbid")

    base_channels: int = Field(16, ge=1, description="Width of the full-resolution level; each deeper level doubles it.")
    depth: int = Field(4, ge=2, le=7, description="Number of resolution levels (depth - 1 poolings).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Channel dropout right before the classifier.")


class DLV3POptions(BaseModel):
    """Compact DeepLabV3+ CNN."""

    model_config = ConfigDict(extra="forbid")

    stem_channels: int = Field(16, ge=4, description="Width of the dense 3x3 stride-2 stem convolution.")
    widths: Quad = Field((24, 32, 64, 160), description="Widths of the 1/2, 1/4, 1/8 and deep encoder stages.")
    depths: Quad = Field((1, 2, 3, 6), description="Blocks per stage: separable residual blocks at 1/2, then "
                                                   "inverted residuals (the first of the 1/4 and 1/8 stages fused).")
    expansion: float = Field(4.0, gt=0, description="Hidden-width multiple of the inverted-residual blocks.")
    output_stride: Literal[8, 16] = Field(16, description="Resolution of the deep stage and ASPP: 16 (1/16) or 8 "
                                                          "(1/8, dilated; about twice the training time).")
    dilations: tuple[int, ...] = Field((1, 2), description="Dilations of the deep stage: block i > 0 (from 0) uses "
                                                              "dilations[i % len(dilations)], block 0 uses 1.")
    aspp_channels: int = Field(128, ge=8, description="Width of each ASPP branch and of the ASPP output.")
    aspp_rates: tuple[int, ...] = Field((2, 4, 6), description="Dilations of the depthwise-separable ASPP branches, "
                                                               "in pixels of the deep map (6/12/18 at 512px and "
                                                               "output stride 8 cover the same share of the face).")
    decoder_channels: Pair = Field((32, 96), description="Decoder widths at 1/2 and at 1/4 resolution.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Channel dropout after ASPP and before the classifier.")

    @model_validator(mode="after")
    def _check(self):
        if min(self.depths) < 1 or min(self.widths) < 1:
            raise ValueError("depths and widths must be >= 1")
        if not self.dilations or min(self.dilations) < 1 or (self.aspp_rates and min(self.aspp_rates) < 1):
            raise ValueError("dilations need at least one value; dilations and aspp_rates must be >= 1")
        return self


class DLV3PSmallOptions(DLV3POptions):
    """Smaller, faster compact DeepLabV3+ CNN."""

    stem_channels: int = Field(16, ge=4, description="Width of the dense 3x3 stride-2 stem convolution.")
    widths: Quad = Field((16, 24, 48, 128), description="Widths of the 1/2, 1/4, 1/8 and deep encoder stages.")
    depths: Quad = Field((1, 2, 2, 4), description="Blocks per stage: separable residual blocks at 1/2, then "
                                                   "inverted residuals (the first of the 1/4 and 1/8 stages fused).")
    aspp_channels: int = Field(96, ge=8, description="Width of each ASPP branch and of the ASPP output.")
    decoder_channels: Pair = Field((24, 64), description="Decoder widths at 1/2 and at 1/4 resolution.")


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model: its options, the arch file and builder function that build it, the
    builder's keywords the model fixes, and what it is."""

    options: type[BaseModel]
    arch: ModuleType
    builder: str
    description: str
    fixed: dict = field(default_factory=dict)

    @property
    def arch_file(self) -> str:
        return str(Path(self.arch.__file__).resolve())


MODELS: dict[str, BuiltinModel] = {
    "msf": BuiltinModel(MSFOptions, msf_arch, "build_msf",
                        "MicroSegFormer: 4-stage efficient-attention transformer + all-MLP decoder", {"lmsa": False}),
    "msf-lmsa": BuiltinModel(MSFLMSAOptions, msf_arch, "build_msf",
                             "MicroSegFormer + Lightweight Multi-Scale Attention in the decoder", {"lmsa": True}),
    "unet": BuiltinModel(UNetOptions, unet_arch, "build_unet", "Small U-Net baseline"),
    "dlv3p": BuiltinModel(DLV3POptions, dlv3p_arch, "build_dlv3p",
                          "Compact DeepLabV3+ CNN: inverted residuals, ASPP + image pooling, 1/4 and 1/2 skips"),
    "dlv3p-s": BuiltinModel(DLV3PSmallOptions, dlv3p_arch, "build_dlv3p", "Smaller, faster compact DeepLabV3+ CNN"),
}

# model name -> (arch file, builder name), for callers that need the file before building a model
ARCH_SOURCES = {name: (m.arch_file, m.builder) for name, m in MODELS.items()}


def create_model(name: str, options: BaseModel, num_classes: int, in_channels: int = 3):
    """Built-in model ``name`` with ``options`` for ``num_classes`` classes and ``in_channels``
    bands, carrying ``cpx_source`` (see the module docstring)."""
    spec = MODELS[name]
    kwargs = _with_bands(dict(num_classes=num_classes, **spec.fixed, **options.model_dump()), in_channels)
    model = getattr(spec.arch, spec.builder)(**kwargs)
    model.cpx_source = (spec.arch_file, spec.builder, {k: _plain(v) for k, v in kwargs.items()})
    return model


@hookimpl
def register_models(register):
    for name, spec in MODELS.items():
        register(name, functools.partial(create_model, name), options=spec.options, description=spec.description)
