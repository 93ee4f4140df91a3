"""A small U-Net baseline for semantic segmentation.

Self-contained on purpose (imports only ``torch`` and the standard library) so it can be
copied verbatim into a competition submission as the model source. Build a model with
:func:`build_unet`; it maps float images ``B x in_channels x H x W`` in [0, 1] (RGB by
default) to logits ``B x num_classes x H x W`` for any ``H`` and ``W``.

Each level is two 3x3 conv + batch norm + ReLU layers; the encoder halves the resolution
with max pooling and doubles the width, the decoder upsamples bilinearly to the exact size of
the matching skip connection (so odd sizes need no padding), concatenates and convolves.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# ImageNet statistics: a fixed, well-known normalisation that needs no data to compute.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _band_statistics(in_channels):
    """Per-band normalisation ``(mean, std)``, each ``1 x in_channels x 1 x 1``.

    With three bands or more the first three are RGB and get ImageNet's statistics; every
    other band (near-infrared, elevation, or each band of a 1- or 2-band image) gets the mean
    of the three, a neutral guess that brings a [0, 1] band near zero mean and unit spread
    without needing data. Three bands give exactly ``_MEAN`` and ``_STD``.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")
    rgb = 3 if in_channels >= 3 else 0
    mean = _MEAN[:rgb] + (sum(_MEAN) / 3,) * (in_channels - rgb)
    std = _STD[:rgb] + (sum(_STD) / 3,) * (in_channels - rgb)
    return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)


class DoubleConv(nn.Sequential):
    def __init__(self, in_ch, out_ch):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    def __init__(self, num_classes=19, in_channels=3, base_channels=16, depth=4, dropout=0.0):
        super().__init__()
        if depth < 2:
            raise ValueError("a U-Net needs at least 2 levels")
        widths = [base_channels * 2 ** i for i in range(depth)]
        mean, std = _band_statistics(in_channels)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.down = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.down.append(DoubleConv(prev, w))
            prev = w
        self.up = nn.ModuleList(
            DoubleConv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth - 1)))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        # channels-last is the fast layout for oneDNN convolutions on CPU
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                # ceil_mode keeps the last row/column of odd-sized maps
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        # plain NCHW float32 logits, whatever precision the body ran in
        return self.classifier(self.dropout(x)).float().contiguous()


def build_unet(num_classes=19, base_channels=16, depth=4, dropout=0.0, in_channels=3):
    """Build a U-Net from plain values.

    :param in_channels: image bands (3: RGB; see :func:`_band_statistics` for the others).
    :param base_channels: width of the full-resolution level; each deeper level doubles it.
    :param depth: number of resolution levels (``depth - 1`` poolings).
    :param dropout: channel dropout right before the classifier.
    """
    return UNet(num_classes=num_classes, in_channels=in_channels, base_channels=base_channels, depth=depth,
                dropout=dropout)
