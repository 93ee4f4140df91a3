"""Built-in batch augmentations: mirror, one random affine per sample, colour, blur and noise.

They run on whole batches of tensors (on whatever device the batch lives on) and transform
images ``B x C x H x W`` (C the competition's ``channels``: 1 for grey, 3 for RGB, 4 for RGB +
near-infrared, ...) and masks ``B x H x W`` together:

* A horizontal flip also swaps the competition's left/right classes in the mask; mirroring a
  face without relabelling teaches the model that a left eye may be labelled right.
* Geometry is one affine matrix per sample (mirror x rotation x scale + translation), turned
  into one sampling grid for the whole batch; images sample it bilinearly and masks with
  nearest, so the two stay pixel-aligned and masks only ever hold ids already in them.
* Multi-scale random crops (``crop_scale``, ``crop_size``) fold into the same matrix: each
  sample is zoomed by a factor drawn from ``crop_scale`` and a ``crop_size`` square is cut at
  a uniformly random position of the zoomed image (the image sits at a random place inside the
  square, padded, when it is smaller), as DeepLab trains (random scale, then a fixed crop).
  The batch comes out ``crop_size`` pixels square; prediction is unchanged (whole images at
  the training size), which fully convolutional models take in their stride.
* Areas brought in from outside the frame are 0 in the image and class 0 (background) in the
  mask. Reflect padding was rejected: it mirrors the border region, so a reflected eye or ear
  would carry the wrong left/right label. Ignored pixels (``IGNORE = 255``: letterbox padding,
  a competition's ignore index) inside the frame stay ignored: nearest sampling only copies
  ids, and the left/right swap table maps 255 to itself.
* Colour, blur and noise touch the image only, and run before the warp so the padded border
  stays exactly 0. Blur and noise treat every band alike. Colour jitter (brightness,
  contrast, saturation, hue) models how a camera renders visible colour, so with three bands
  or more it changes the first three, taken as RGB, and leaves the others (near-infrared,
  elevation, ...) as they are: those bands measure other quantities, and scaling them with the
  RGB factors would change the ratios between bands (NDVI, for one) that a model may rely on.
  With one or two bands there is no colour: brightness and contrast apply to each band as to a
  grey image (the same factors for every band of a sample), saturation and hue not at all.

All randomness comes from torch's global RNG (parameters are drawn on the CPU generator,
noise on the batch's device), so seeding it reproduces an epoch exactly.

The presets ``none``, ``baseline`` and ``strong`` share one options model; they differ only in
defaults, so any preset can be tuned field by field (``augmentation.options.rotation=20``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.geometry.conversions import normalize_homography
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, field_validator
from torch import nn

from cpx.kernel.hookspecs import hookimpl


def _not_a_switch(value: Any) -> Any:
    # YAML reads yes/no/on/off as booleans and pydantic would take True as 1.0: `flip: yes`
    # would mirror every sample. A probability is asked for as a number.
    if isinstance(value, bool):
        raise ValueError("expected a probability between 0 and 1, not a yes/no switch")
    return value


Probability = Annotated[float, BeforeValidator(_not_a_switch), Field(ge=0.0, le=1.0)]


class AugmentOptions(BaseModel):
    """Everything off: the ``none`` preset. Other presets subclass with their own defaults."""

    model_config = ConfigDict(extra="forbid")

    flip: Probability = Field(0.0, description="Probability of a horizontal mirror (left/right classes swapped).")
    flip_swap: bool = Field(True, description="Swap the competition's left/right classes in a mirrored mask; false "
                                              "keeps the labels as they are, the reference recipe's mistake "
                                              "(for ablations).")
    rotation: float = Field(0.0, ge=0.0, le=180.0,
                            description="Maximum rotation in degrees; each sample draws an angle in [-rotation, rotation].")
    scale: tuple[float, float] = Field((1.0, 1.0), description="Range (low, high) of the zoom factor drawn per sample; "
                                                                "above 1 zooms in.")
    translate: float = Field(0.0, ge=0.0, lt=0.5,
                             description="Maximum shift as a fraction of width/height, drawn per sample and axis.")
    brightness: float = Field(0.0, ge=0.0, le=1.0, description="Brightness factor drawn in [1 - b, 1 + b].")
    contrast: float = Field(0.0, ge=0.0, le=1.0, description="Contrast factor drawn in [1 - c, 1 + c].")
    saturation: float = Field(0.0, ge=0.0, le=1.0, description="Saturation factor drawn in [1 - s, 1 + s].")
    hue: float = Field(0.0, ge=0.0, le=0.5, description="Hue shift drawn in [-h, h], in turns of the colour wheel.")
    blur: Probability = Field(0.0, description="Probability of a Gaussian blur per sample.")
    blur_sigma: tuple[float, float] = Field((0.1, 1.5), description="Range (low, high) of the blur's sigma in pixels.")
    noise: float = Field(0.0, ge=0.0, le=0.5,
                         description="Maximum standard deviation of additive Gaussian noise; each sample draws "
                                     "its own in [0, noise].")
    crop_scale: tuple[float, float] = Field((1.0, 1.0), description="Range (low, high) of the zoom drawn per sample "
                                                                    "before a random crop (multi-scale training, "
                                                                    "e.g. [0.5, 1.5]); (1, 1) with no crop_size: off.")
    crop_size: Optional[int] = Field(None, gt=0, description="Side in pixels of the random square crop the batch is "
                                                             "cut to; empty keeps the input size.")

    @field_validator("scale", "blur_sigma", "crop_scale")
    @classmethod
    def _ordered_positive_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"needs 0 < low <= high, got ({low}, {high})")
        return value


def _preset_options(class_name: str, doc: str, **defaults: Any) -> type[AugmentOptions]:
    """A subclass of AugmentOptions whose fields keep their type, bounds and help, with new defaults."""
    fields = {}
    for key, value in defaults.items():
        info = AugmentOptions.model_fields[key]
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[key] = (annotation, Field(value, description=info.description))
    return create_model(class_name, __base__=AugmentOptions, __doc__=doc, **fields)


BaselineAugmentOptions = _preset_options(
    "BaselineAugmentOptions", "The reference recipe: mirror, mild rotation and zoom, mild colour.",
    flip=0.5, rotation=15.0, scale=(0.9, 1.1), brightness=0.2, contrast=0.2, saturation=0.1,
)

StrongAugmentOptions = _preset_options(
    "StrongAugmentOptions", "Heavier geometry and colour, plus occasional blur and sensor noise.",
    flip=0.5, rotation=30.0, scale=(0.75, 1.25), translate=0.1, brightness=0.4, contrast=0.4,
    saturation=0.3, hue=0.03, blur=0.2, noise=0.03,
)


class BatchAugment(nn.Module):
    """``forward(images, masks)`` on ``B x C x H x W`` float images in [0, 1] (any number of
    bands C) and ``B x H x W`` integer masks (class ids, and IGNORE at ignored pixels)."""

    def __init__(self, options: AugmentOptions, competition: Optional[Any] = None):
        super().__init__()
        self.options = options
        o = options
        self.crops = o.crop_size is not None or tuple(o.crop_scale) != (1.0, 1.0)
        self.warps = o.rotation > 0 or o.scale != (1.0, 1.0) or o.translate > 0 or self.crops
        self.color = (K.ColorJitter(o.brightness, o.contrast, o.saturation, o.hue, p=1.0)
                      if (o.brightness or o.contrast or o.saturation or o.hue) else None)
        # one or two bands: no colour, so only the grey-image steps (see the module docstring)
        self.grey = K.ColorJitter(o.brightness, o.contrast, p=1.0) if (o.brightness or o.contrast) else None
        if o.blur > 0:
            # +-3 sigma holds 99.7% of the kernel's mass; an odd size keeps it centred
            size = 2 * math.ceil(3 * o.blur_sigma[1]) + 1
            self.blur = K.RandomGaussianBlur((size, size), o.blur_sigma, p=o.blur)
        else:
            self.blur = None
        pairs = tuple(getattr(competition, "flip_pairs", ()) or ()) if o.flip_swap else ()
        if pairs:
            num_classes = competition.num_classes
            # 256 entries at least, so ignore values such as 255 pass through unchanged
            lut = torch.arange(max(256, num_classes))
            lut[:num_classes] = torch.tensor(competition.flip_permutation())
        else:
            lut = None
        self.register_buffer("swap_lut", lut, persistent=False)

    @property
    def is_identity(self) -> bool:
        o = self.options
        return not (o.flip or self.warps or o.noise or self.color is not None or self.blur is not None)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.options.model_dump().items())

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or masks.ndim != 3 or images.shape[0] != masks.shape[0] \
                or images.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"expected images B x C x H x W and masks B x H x W of the same size, "
                             f"got {tuple(images.shape)} and {tuple(masks.shape)}")
        if self.is_identity:
            return images, masks
        o = self.options
        batch, _, height, width = images.shape
        device = images.device
        x = images.float()
        m = masks

        flipped = torch.rand(batch) < o.flip

        if self.color is not None:
            x = self._jitter(x)
        if self.blur is not None:
            x = self.blur(x)
        if o.noise:
            std = (torch.rand(batch) * o.noise).to(device).view(batch, 1, 1, 1)
            x = (x + torch.randn_like(x) * std).clamp_(0.0, 1.0)

        if self.warps:
            # building the sampling grid costs more than sampling it, so both warps share one
            size = (o.crop_size or height, o.crop_size or width) if self.crops else (height, width)
            grid = self._sampling_grid(batch, height, width, flipped, device, size)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            # float32 holds every id below 2**24 exactly, so the round trip is lossless
            m = F.grid_sample(m.unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=True).squeeze(1).to(masks.dtype)
        elif flipped.any():
            # a pure mirror is an exact copy; avoid the interpolation a warp would do
            rows = flipped.nonzero().squeeze(1).to(device)
            x = x.index_copy(0, rows, x.index_select(0, rows).flip(-1))
            m = m.index_copy(0, rows, m.index_select(0, rows).flip(-1))

        if self.swap_lut is not None and flipped.any():
            rows = flipped.nonzero().squeeze(1).to(device)
            lut = self.swap_lut.to(device)
            swapped = lut[m.index_select(0, rows).long()].to(m.dtype)
            m = m.index_copy(0, rows, swapped)

        return x.to(images.dtype), m

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Colour jitter of the first three bands as RGB, or of each of one or two grey bands."""
        bands = x.shape[1]
        if bands == 3:
            return self.color(x)
        if bands > 3:
            return torch.cat([self.color(x[:, :3]), x[:, 3:]], 1)
        if self.grey is None:
            return x
        first = self.grey(x[:, :1])
        # replaying the parameters drawn for the first band gives each band the same factors
        rest = [self.grey(x[:, i:i + 1], params=self.grey._params) for i in range(1, bands)]
        return torch.cat([first, *rest], 1)

    def _sampling_grid(self, batch: int, height: int, width: int, flipped: torch.Tensor,
                       device: torch.device, out_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """One ``B x H' x W' x 2`` grid (``out_size``, default the input's ``H x W``): per sample a
        mirror, a rotation and a zoom about the centre, and a shift; with crops on, then a zoom
        from ``crop_scale`` and a crop of ``out_size`` at a random position.

        The parameters are drawn on the CPU; only the small matrices travel to ``device``.
        """
        out_h, out_w = out_size or (height, width)
        o = self.options
        angle = torch.deg2rad((torch.rand(batch) * 2 - 1) * o.rotation)
        low, high = o.scale
        zoom = low + torch.rand(batch) * (high - low)
        shift = (torch.rand(batch, 2) * 2 - 1) * o.translate * torch.tensor([width, height])
        mirror = 1.0 - 2.0 * flipped.float()

        # The grid needs, for every output pixel, the input pixel it samples: the inverse of
        # "mirror, rotate by angle, zoom, shift", which in closed form is
        # src = mirror * rotate(-angle) * (dst - centre - shift) / zoom + centre.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        linear = torch.stack([
            torch.stack([cos * mirror, sin * mirror], dim=-1),
            torch.stack([-sin, cos], dim=-1),
        ], dim=1)  # B x 2 x 2
        # pixel centres run 0..W-1 under align_corners=True, so the mirror axis is (W - 1) / 2
        centre = torch.tensor([(width - 1) / 2, (height - 1) / 2])
        offset = centre - (linear @ (centre + shift).unsqueeze(-1)).squeeze(-1)
        if self.crops:
            # Output pixel p of the crop is point (p + origin) / s of the zoomed frame, so the map
            # above applies to that point: linear / s, and offset + linear @ origin / s.
            low, high = o.crop_scale
            s = low + torch.rand(batch) * (high - low)
            extent = torch.stack([s * (width - 1) - (out_w - 1), s * (height - 1) - (out_h - 1)], dim=-1)
            # uniform over the zoomed image when the crop fits in it, else over where the
            # smaller image can sit inside the crop (a negative origin)
            origin = torch.minimum(extent, torch.zeros(())) + torch.rand(batch, 2) * extent.abs()
            linear = linear / s.view(batch, 1, 1)
            offset = offset + (linear @ origin.unsqueeze(-1)).squeeze(-1)
        matrix = torch.zeros(batch, 3, 3)
        matrix[:, :2, :2] = linear
        matrix[:, :2, 2] = offset
        matrix[:, 2, 2] = 1.0
        # affine_grid works in [-1, 1] coordinates rather than pixels; the matrix maps output
        # pixels (kornia's "source") to input pixels ("destination")
        theta = normalize_homography(matrix, (out_h, out_w), (height, width), align_corners=True)[:, :2]
        return F.affine_grid(theta.to(device), [batch, 1, out_h, out_w], align_corners=True)


@hookimpl
def register_augmentations(register):
    register("none", BatchAugment, options=AugmentOptions,
             description="No augmentation (every option off; turn single ones on as needed)")
    register("baseline", BatchAugment, options=BaselineAugmentOptions,
             description="Reference recipe: flip 0.5 with left/right swap, rotation 15 deg, scale 0.9-1.1, "
                         "brightness/contrast 0.2, saturation 0.1")
    register("strong", BatchAugment, options=StrongAugmentOptions,
             description="Rotation 30 deg, scale 0.75-1.25, translate 0.1, stronger colour, blur and noise")
