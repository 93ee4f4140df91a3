"""MicroSegFormer: a small hierarchical transformer for semantic segmentation.

This file is self-contained on purpose: it imports only ``torch`` and the standard library,
so it can be copied verbatim into a competition submission as the model source. Build a
model with :func:`build_msf`; it maps float images ``B x in_channels x H x W`` in [0, 1]
(RGB by default) to logits ``B x num_classes x H x W`` for any ``H`` and ``W``.

Architecture
------------
* Encoder: four stages at 1/4, 1/8, 1/16 and 1/32 of the input. Each stage starts with an
  overlapping patch embedding (a strided convolution: 7x7 stride 4, then 3x3 stride 2) and
  stacks transformer blocks of efficient self-attention (keys and values come from a map
  shrunk by a strided convolution, ratios such as 8, 4, 2, 1) and a Mix-FFN (an MLP with a
  3x3 depthwise convolution between its two linear layers).
* Decoder (all-MLP): each stage is projected to a common width, upsampled to 1/4,
  concatenated and fused by a linear layer with batch norm and ReLU; optionally a
  Lightweight Multi-Scale Attention block (parallel 3/5/7 depthwise convolutions, a
  pointwise mix and squeeze-excitation, with a residual) refines the fused map; dropout,
  a 1x1 classifier and a bilinear upsample to the input size finish.

CPU notes
---------
Feature maps are kept as tokens ``B x N x C`` whose memory is also a valid channels-last
``B x C x H x W`` view, so switching between linear layers and convolutions costs no copies.
Exact rewrites keep the same parameters, function and gradients while doing less work:
the decoder's per-stage projection and its slice of the fusion layer are linear and commute
with bilinear upsampling, so they are multiplied into one small matrix and applied at each
stage's own resolution before upsampling; the LMSA's summed depthwise branches are merged
into one 7x7 kernel per step, and that kernel's weight gradient is computed in 3-column
slices, which oneDNN runs on its fast depthwise path (see ``_DepthwiseConvCPU``); in eval
mode the batch norms fold into the layers before them. In bf16 on CPU, attention runs as
matmuls over cache-sized blocks of queries (see ``_blocked_attention``).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Attention scores computed at a time on CPU (see _blocked_attention): 4M bf16 scores stay
# in the caches of this class of machine; a quarter or four times as many were slower.
_SCORE_BLOCK = 1 << 22

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


def _as_map(tokens, h, w):
    # B x N x C tokens viewed as a channels-last B x C x H x W map, without copying
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)


def _as_tokens(fmap):
    # free when the map is channels-last, which every conv here produces
    b, c, h, w = fmap.shape
    return fmap.permute(0, 2, 3, 1).reshape(b, h * w, c)


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_ch, dim, kernel, stride):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel, stride, kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(_as_tokens(x)), h, w


def _blocked_attention(q, k, v, dropout, training):
    """softmax(q k^T / sqrt(d)) v, a block of query rows at a time.

    With keys shrunk by the spatial reduction, one block of the score matrix fits in the
    caches, and in bf16 plain matmuls over such blocks ran 1.3-1.6x faster on CPU than the
    flash-attention kernel (forward + backward and inference alike). In float32 the flash
    kernel stays 2-3x faster, so this serves bf16 only.
    """
    b, heads, n, d = q.shape
    rows = max(1, _SCORE_BLOCK // max(1, b * heads * k.shape[2]))
    kt = k.transpose(-2, -1) * d ** -0.5
    parts = [F.dropout((block @ kt).softmax(-1), dropout, training) @ v for block in q.split(rows, 2)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


class EfficientAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a spatially reduced map."""

    def __init__(self, dim, heads, sr_ratio, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)

    def forward(self, x, h, w):
        b, n, c = x.shape
        hd = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, hd).transpose(1, 2)
        if self.sr_ratio > 1:
            m = _as_map(x, h, w)
            r = self.sr_ratio
            # tiny inputs: pad so the reduction still yields at least one key
            ph, pw = max(0, r - h), max(0, r - w)
            if ph or pw:
                m = F.pad(m, (0, pw, 0, ph))
            x = self.sr_norm(_as_tokens(self.sr(m)))
        kv = self.kv(x).reshape(b, -1, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        drop = self.attn_drop if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            out = _blocked_attention(q, kv[0], kv[1], drop, self.training)
        else:
            out = F.scaled_dot_product_attention(q, kv[0], kv[1], dropout_p=drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class MixFFN(nn.Module):
    """MLP with a 3x3 depthwise conv: gives the tokens positional cues without embeddings."""

    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x, h, w):
        x = self.fc1(x)
        x = _as_tokens(self.dw(_as_map(x, h, w)))
        return self.drop(self.fc2(self.drop(F.gelu(x))))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, sr_ratio, drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientAttention(dim, heads, sr_ratio, attn_drop=drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MixFFN(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, h, w):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class Stage(nn.Module):
    def __init__(self, in_ch, dim, depth, heads, mlp_ratio, sr_ratio, kernel, stride,
                 drop, drop_paths):
        super().__init__()
        self.embed = OverlapPatchEmbed(in_ch, dim, kernel, stride)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, sr_ratio, drop, dp) for dp in drop_paths)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x, h, w = self.embed(x)
        for blk in self.blocks:
            x = blk(x, h, w)
        return self.norm(x), h, w


def _bn_affine(bn):
    """(scale, shift) with bn(x) == x * scale + shift per channel, from running statistics."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class _DepthwiseConvCPU(torch.autograd.Function):
    """Stride-1 depthwise conv whose weight gradient is computed in column slices.

    oneDNN's fast depthwise weight-gradient kernel only takes kernels up to 3 wide; a 7x7
    one falls back to a generic grouped kernel that is about 20x slower on CPU. A kh x kw
    weight gradient equals the kh x 3 gradients of the matching column slices of the padded
    input, concatenated, and each of those takes the fast path.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.padding = padding
        ctx.dtypes = (weight.dtype, bias.dtype)
        # run in the activations' precision, as autocast would, and keep the saved tensors
        # consistent with it for the hand-written backward
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        ctx.save_for_backward(x, weight)
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x, weight, bias, 1, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        p, channels = ctx.padding, x.shape[1]
        gy = gy.to(x.dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(x.shape, weight, gy, padding=p, groups=channels)
        if ctx.needs_input_grad[1]:
            kh, kw = weight.shape[-2:]
            xp = F.pad(x, (p, p, p, p))
            out_w = gy.shape[-1]
            parts = []
            for c0 in range(0, kw, 3):
                c1 = min(c0 + 3, kw)
                xs = xp[..., c0:c0 + out_w + c1 - c0 - 1]
                parts.append(torch.nn.grad.conv2d_weight(xs, (channels, 1, kh, c1 - c0), gy, groups=channels))
            gw = torch.cat(parts, -1).to(ctx.dtypes[0])
        if ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3)).to(ctx.dtypes[1])
        return gx, gw, gb, None


def depthwise_conv(x, weight, bias, padding):
    """Stride-1 'same' depthwise conv, fast to train on CPU for kernels wider than 3."""
    if x.device.type == "cpu" and weight.shape[-1] > 3 and torch.is_grad_enabled():
        return _DepthwiseConvCPU.apply(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, 1, padding, 1, x.shape[1])


class LMSA(nn.Module):
    """Lightweight Multi-Scale Attention: multi-kernel depthwise context, pointwise mix,
    squeeze-excitation channel attention, all on a residual branch."""

    def __init__(self, dim, kernels=(3, 5, 7), se_reduction=4):
        super().__init__()
        self.kernels = tuple(sorted(int(k) for k in kernels))
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError(f"LMSA kernel sizes must be odd, got {kernels}")
        self.branches = nn.ModuleList(
            nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim) for k in self.kernels)
        self.pw = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        hidden = max(8, dim // se_reduction)
        self.se1 = nn.Conv2d(dim, hidden, 1)
        self.se2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        # Summing parallel depthwise convs equals one conv with the zero-padded kernels
        # summed, so one pass over the map serves every branch (same params and gradients).
        kmax = self.kernels[-1]
        weight = sum(F.pad(br.weight, [(kmax - k) // 2] * 4)
                     for br, k in zip(self.branches, self.kernels))
        bias = sum(br.bias for br in self.branches)
        y = depthwise_conv(x, weight, bias, kmax // 2)
        if self.training:
            y = F.gelu(self.bn(self.pw(y)))
        else:  # batch norm with running statistics is affine: fold it into the 1x1 conv
            scale, shift = _bn_affine(self.bn)
            y = F.gelu(F.conv2d(y, self.pw.weight * scale.view(-1, 1, 1, 1), shift))
        s = torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        return x + y * s


class MicroSegFormer(nn.Module):
    def __init__(self, num_classes=19, in_channels=3, embed_dims=(32, 64, 128, 160),
                 depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 5), mlp_ratios=(4, 4, 4, 2),
                 sr_ratios=(8, 4, 2, 1), decoder_dim=112, lmsa=False,
                 lmsa_kernels=(3, 5, 7), lmsa_se_reduction=4, dropout=0.0,
                 transformer_dropout=0.0, drop_path=0.0):
        super().__init__()
        n = len(embed_dims)
        if not (len(depths) == len(num_heads) == len(mlp_ratios) == len(sr_ratios) == n):
            raise ValueError("embed_dims, depths, num_heads, mlp_ratios and sr_ratios need one value per stage")
        mean, std = _band_statistics(in_channels)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

        # stochastic depth grows linearly with block index, as is usual for ViT-style stacks
        total = sum(depths)
        rates = [drop_path * i / max(1, total - 1) for i in range(total)]
        self.stages = nn.ModuleList()
        prev, start = in_channels, 0
        for i in range(n):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            self.stages.append(Stage(prev, embed_dims[i], depths[i], num_heads[i], mlp_ratios[i],
                                     sr_ratios[i], kernel, stride, transformer_dropout,
                                     rates[start:start + depths[i]]))
            prev, start = embed_dims[i], start + depths[i]

        self.decoder_dim = decoder_dim
        self.proj = nn.ModuleList(nn.Linear(d, decoder_dim) for d in embed_dims)
        self.fuse = nn.Conv2d(n * decoder_dim, decoder_dim, 1, bias=False)
        self.fuse_bn = nn.BatchNorm2d(decoder_dim)
        self.lmsa = LMSA(decoder_dim, lmsa_kernels, lmsa_se_reduction) if lmsa else None
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(decoder_dim, num_classes, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        # Upsample plain NCHW float32: on CPU that is the fast bilinear path (bf16 and
        # channels-last are slower here) and the loss gets full-precision logits.
        return F.interpolate(self.forward_coarse(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward_coarse(self, x):
        """Float32 logits at 1/4 of the input size; ``forward`` is their bilinear
        (align_corners=False) resize to the input size. Prediction with several TTA views
        merges these and resizes once."""
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        feats = []
        for stage in self.stages:
            t, h, w = stage(x)
            feats.append((t, h, w))
            x = _as_map(t, h, w)

        # project -> upsample -> concat -> fuse, re-associated (see module docstring)
        d = self.decoder_dim
        fuse_w = self.fuse.weight.flatten(1)
        # in eval mode the batch norm is affine and folds into the matrices too (its shift
        # into one stage's bias: bilinear upsampling keeps constants)
        scale, shift = (None, None) if self.training else _bn_affine(self.fuse_bn)
        h0, w0 = feats[0][1], feats[0][2]
        y = None
        for i, ((t, h, w), proj) in enumerate(zip(feats, self.proj)):
            wf = fuse_w[:, i * d:(i + 1) * d]
            weight, bias = wf @ proj.weight, wf @ proj.bias
            if scale is not None:
                weight, bias = weight * scale[:, None], bias * scale + (shift if i == 0 else 0)
            z = _as_map(F.linear(t, weight, bias), h, w)
            if (h, w) != (h0, w0):
                z = F.interpolate(z, size=(h0, w0), mode="bilinear", align_corners=False)
            y = z if y is None else y + z
        y = F.relu(self.fuse_bn(y) if scale is None else y)
        if self.lmsa is not None:
            y = self.lmsa(y)
        return self.classifier(self.dropout(y)).float().contiguous()


def build_msf(num_classes=19, embed_dims=(32, 64, 128, 160), depths=(2, 2, 2, 2),
              num_heads=(1, 2, 4, 5), mlp_ratios=(4, 4, 4, 2), sr_ratios=(8, 4, 2, 1),
              decoder_dim=112, lmsa=False, lmsa_kernels=(3, 5, 7), lmsa_se_reduction=4,
              dropout=0.0, transformer_dropout=0.0, drop_path=0.0, in_channels=3):
    """Build a MicroSegFormer from plain values (all sequences have one entry per stage).

    :param in_channels: image bands (3: RGB; see :func:`_band_statistics` for the others).
    :param dropout: channel dropout right before the classifier.
    :param transformer_dropout: dropout on attention weights and MLP/projection outputs.
    :param drop_path: stochastic-depth rate of the last block (linearly less before it).
    :param lmsa: add the Lightweight Multi-Scale Attention block after fusion.
    """
    return MicroSegFormer(
        num_classes=num_classes, in_channels=in_channels, embed_dims=tuple(embed_dims), depths=tuple(depths),
        num_heads=tuple(num_heads), mlp_ratios=tuple(mlp_ratios), sr_ratios=tuple(sr_ratios),
        decoder_dim=decoder_dim, lmsa=lmsa, lmsa_kernels=tuple(lmsa_kernels),
        lmsa_se_reduction=lmsa_se_reduction, dropout=dropout,
        transformer_dropout=transformer_dropout, drop_path=drop_path)
