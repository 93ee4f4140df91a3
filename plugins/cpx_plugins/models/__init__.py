"""Built-in segmentation models: ``msf``, ``msf-lmsa`` (MicroSegFormer), ``unet`` and the
compact DeepLabV3+-style CNNs ``dlv3p`` and ``dlv3p-s``.

The networks live in self-contained files (``msf_arch.py``, ``unet_arch.py``, ``dlv3p_arch.py``) that import
only torch, so a submission can ship one verbatim. This module adds what cpx needs around
them: validated options, factories and registration.

Standalone source
-----------------
Every factory takes ``in_channels`` (keyword, default 3), the competition's image bands, and
builds the model's first convolution for that many; the parameter counts in the options'
docstrings are at 3 bands (RGB). Each band is normalised before the stem: the first three as
RGB with ImageNet's statistics, any other with their average (``_band_statistics`` in the
arch files).

Every model a factory returns carries ``model.cpx_source``, a tuple
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

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cpx.kernel.hookspecs import hookimpl

from . import dlv3p_arch, msf_arch, unet_arch

MSF_FILE = str(Path(msf_arch.__file__).resolve())
UNET_FILE = str(Path(unet_arch.__file__).resolve())
DLV3P_FILE = str(Path(dlv3p_arch.__file__).resolve())

ARCH_SOURCES = {
    "msf": (MSF_FILE, "build_msf"),
    "msf-lmsa": (MSF_FILE, "build_msf"),
    "unet": (UNET_FILE, "build_unet"),
    "dlv3p": (DLV3P_FILE, "build_dlv3p"),
    "dlv3p-s": (DLV3P_FILE, "build_dlv3p"),
}

Quad = tuple[int, int, int, int]
Pair = tuple[int, int]


def _plain(value: Any) -> Any:
    # tuples become lists so the kwargs survive a JSON or YAML round trip unchanged
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _attach_source(model, name: str, kwargs: dict) -> Any:
    arch_file, builder = ARCH_SOURCES[name]
    model.cpx_source = (arch_file, builder, {k: _plain(v) for k, v in kwargs.items()})
    return model


def _with_bands(kwargs: dict, in_channels: int) -> dict:
    # RGB, the builders' default, stays out of the kwargs (see the module docstring)
    if in_channels != 3:
        kwargs["in_channels"] = in_channels
    return kwargs


class MSFOptions(BaseModel):
    """MicroSegFormer without the LMSA block (defaults: about 1.73M parameters at 19 classes)."""

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
    """MicroSegFormer with the LMSA decoder block (defaults: about 1.76M parameters at 19 classes)."""

    lmsa_kernels: tuple[int, ...] = Field((3, 5, 7), description="Kernel sizes of the parallel depthwise convolutions in the LMSA block (odd).")
    lmsa_se_reduction: int = Field(4, ge=1, description="Squeeze-excitation reduction factor of the LMSA channel attention.")

    @model_validator(mode="after")
    def _check_kernels(self):
        if not self.lmsa_kernels or any(k < 1 or k % 2 == 0 for k in self.lmsa_kernels):
            raise ValueError(f"lmsa_kernels must be odd sizes >= 1, got {list(self.lmsa_kernels)}")
        return self


class UNetOptions(BaseModel):
    """Small U-Net baseline (defaults: about 0.49M parameters at 19 classes)."""

    model_config = ConfigDict(extra="forbid")

    base_channels: int = Field(16, ge=1, description="Width of the full-resolution level; each deeper level doubles it.")
    depth: int = Field(4, ge=2, le=7, description="Number of resolution levels (depth - 1 poolings).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Channel dropout right before the classifier.")


class DLV3POptions(BaseModel):
    """Compact DeepLabV3+ CNN (defaults: 1,515,283 parameters at 19 classes)."""

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
    """Smaller, faster compact DeepLabV3+ CNN (defaults: 648,883 parameters at 19 classes)."""

    stem_channels: int = Field(16, ge=4, description="Width of the dense 3x3 stride-2 stem convolution.")
    widths: Quad = Field((16, 24, 48, 128), description="Widths of the 1/2, 1/4, 1/8 and deep encoder stages.")
    depths: Quad = Field((1, 2, 2, 4), description="Blocks per stage: separable residual blocks at 1/2, then "
                                                   "inverted residuals (the first of the 1/4 and 1/8 stages fused).")
    aspp_channels: int = Field(96, ge=8, description="Width of each ASPP branch and of the ASPP output.")
    decoder_channels: Pair = Field((24, 64), description="Decoder widths at 1/2 and at 1/4 resolution.")


def _msf_kwargs(options: MSFOptions, num_classes: int, lmsa: bool, in_channels: int) -> dict:
    return _with_bands(dict(num_classes=num_classes, lmsa=lmsa, **options.model_dump()), in_channels)


def create_msf(options: MSFOptions, num_classes: int, in_channels: int = 3):
    """MicroSegFormer: hierarchical transformer encoder with an all-MLP decoder."""
    kwargs = _msf_kwargs(options, num_classes, lmsa=False, in_channels=in_channels)
    return _attach_source(msf_arch.build_msf(**kwargs), "msf", kwargs)


def create_msf_lmsa(options: MSFLMSAOptions, num_classes: int, in_channels: int = 3):
    """MicroSegFormer with a Lightweight Multi-Scale Attention block after decoder fusion."""
    kwargs = _msf_kwargs(options, num_classes, lmsa=True, in_channels=in_channels)
    return _attach_source(msf_arch.build_msf(**kwargs), "msf-lmsa", kwargs)


def create_unet(options: UNetOptions, num_classes: int, in_channels: int = 3):
    """Small U-Net baseline."""
    kwargs = _with_bands(dict(num_classes=num_classes, **options.model_dump()), in_channels)
    return _attach_source(unet_arch.build_unet(**kwargs), "unet", kwargs)


def create_dlv3p(options: DLV3POptions, num_classes: int, in_channels: int = 3):
    """Compact DeepLabV3+: inverted-residual encoder, ASPP with image pooling, 1/4 and 1/2 skips."""
    kwargs = _with_bands(dict(num_classes=num_classes, **options.model_dump()), in_channels)
    return _attach_source(dlv3p_arch.build_dlv3p(**kwargs), "dlv3p", kwargs)


def create_dlv3p_s(options: DLV3PSmallOptions, num_classes: int, in_channels: int = 3):
    """The smaller, faster width/depth variant of :func:`create_dlv3p`."""
    kwargs = _with_bands(dict(num_classes=num_classes, **options.model_dump()), in_channels)
    return _attach_source(dlv3p_arch.build_dlv3p(**kwargs), "dlv3p-s", kwargs)


@hookimpl
def register_models(register):
    register("msf", create_msf, options=MSFOptions,
             description="MicroSegFormer: 4-stage efficient-attention transformer + all-MLP decoder")
    register("msf-lmsa", create_msf_lmsa, options=MSFLMSAOptions,
             description="MicroSegFormer + Lightweight Multi-Scale Attention in the decoder (~1.76M params)")
    register("unet", create_unet, options=UNetOptions,
             description="Small U-Net baseline (~0.49M params)")
    register("dlv3p", create_dlv3p, options=DLV3POptions,
             description="Compact DeepLabV3+ CNN: inverted residuals, ASPP + image pooling, 1/4 and 1/2 skips (1,515,283 params)")
    register("dlv3p-s", create_dlv3p_s, options=DLV3PSmallOptions,
             description="Smaller, faster compact DeepLabV3+ CNN (648,883 params)")
