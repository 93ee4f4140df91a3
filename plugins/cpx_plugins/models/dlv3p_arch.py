"""A compact DeepLabV3+-style CNN for face parsing (and other dense labelling).

Self-contained on purpose (imports only ``torch`` and the standard library) so it can be
copied verbatim into a competition submission as the model source. Build a model with
:func:`build_dlv3p`; it maps float images ``B x in_channels x H x W`` in [0, 1] (RGB by
default) to logits ``B x num_classes x H x W`` for any ``H`` and ``W``.

Architecture
------------
* Stem at 1/2: a 3x3 stride-2 convolution of the ``in_channels`` bands, then a depthwise-separable residual block. Its
  output is the 1/2-resolution skip.
* Encoder: three stages at 1/4, 1/8 and a deep stage at 1/16 or (with ``output_stride=8``)
  still at 1/8. The 1/4 and 1/8 stages open with a fused inverted residual (a dense strided
  3x3 expanding convolution, then a 1x1 projection: oneDNN trains strided depthwise
  convolutions slowly); every other block is an inverted residual (1x1 expand, 3x3
  depthwise, 1x1 linear projection, residual when the shapes match). Block ``i`` (from 0) of
  the deep stage uses dilation ``dilations[i % len(dilations)]``, except block 0, which
  changes width and stride and uses 1. The 1/4 stage output is the second skip.
* Context: an ASPP module -- a 1x1 branch, depthwise-separable 3x3 branches at the
  ``aspp_rates`` dilations and an image-pooling branch -- concatenated and fused by a 1x1
  convolution.
* Decoder (FPN-like): the context map is projected (1x1) to the 1/4 decoder width,
  upsampled to 1/4, added to the 1x1-projected 1/4 skip and refined by two
  depthwise-separable convolutions; the same again at 1/2 with the 1/2 skip and one
  refinement; a 1x1 classifier gives logits at 1/2 that a bilinear resize brings to the
  input size. Adding projected maps instead of concatenating keeps the depthwise work at
  1/2 resolution to the narrow decoder width, the most expensive place of the network.

Because the last step is that resize, :meth:`DeepLabV3Plus.forward_coarse` returns the 1/2
logits exactly, and ``forward(x)`` is their bilinear (``align_corners=False``) resize.

Convolutions are followed by batch norm and, except the linear projections, ReLU (the fast
pair for oneDNN on CPU, in fp32 or under bf16 autocast); maps are kept channels-last. In
evaluation each batch norm is folded into its convolution (:class:`ConvBNReLU`).
Two exact rewrites keep CPU training off slow paths: a dilated inverted residual runs as an
undilated one on the interleaved sub-images of its input (:func:`space_to_batch`), and the
classifier with its channel dropout is one batched matrix product that writes NCHW logits
(:meth:`DeepLabV3Plus._classify`). In float32 training, a ReLU output that only feeds the next
convolution of its block, and a depthwise convolution's output, are not kept for the backward
pass but recomputed there from the kept maps (:func:`run_chain`).
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


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def space_to_batch(x, d):
    """The ``d ** 2`` interleaved sub-images of ``x`` (``B x C x H x W``, H and W multiples of
    ``d``) stacked along the batch: ``(B * d * d) x C x H/d x W/d``, channels-last.

    Pixel ``(i, j)`` of sub-image ``(p, q)`` is pixel ``(i * d + p, j * d + q)`` of the map, so a
    3x3 convolution with dilation ``d`` on the map is an undilated one on each sub-image.
    """
    b, c, h, w = x.shape
    sub = x.reshape(b, c, h // d, d, w // d, d).permute(0, 3, 5, 1, 2, 4).reshape(b * d * d, c, h // d, w // d)
    return sub.contiguous(memory_format=torch.channels_last)


def batch_to_space(x, d):
    """The inverse of :func:`space_to_batch`: ``B x C x H x W``, channels-last."""
    bd, c, h, w = x.shape
    b = bd // (d * d)
    y = x.reshape(b, d, d, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c, h * d, w * d)
    return y.contiguous(memory_format=torch.channels_last)


def dilated_depthwise(x, weight, dilation, bias=None):
    """A 'same' 3x3 depthwise convolution with ``dilation``, run as an undilated one.

    The pixels ``dilation`` apart form ``dilation ** 2`` interleaved sub-images; a dilated
    3x3 convolution only ever combines pixels of one sub-image, so it equals an ordinary 3x3
    convolution of each sub-image stacked along the batch (zero-padding the map to a multiple
    of ``dilation`` first adds only zeros the dilated convolution would read as padding).
    oneDNN trains dilated depthwise convolutions several times slower than undilated ones.
    """
    d = dilation
    _, c, h, w = x.shape
    hp, wp = -(-h // d) * d, -(-w // d) * d
    if hp != h or wp != w:
        x = F.pad(x, (0, wp - w, 0, hp - h))
    y = batch_to_space(F.conv2d(space_to_batch(x, d), weight, bias, 1, 1, 1, c), d)
    return y[:, :, :h, :w].contiguous(memory_format=torch.channels_last)


class DepthwiseConv(nn.Conv2d):
    """3x3 depthwise convolution (no bias); dilated ones run through :func:`dilated_depthwise`."""

    def __init__(self, channels, stride=1, dilation=1):
        super().__init__(channels, channels, 3, stride, dilation, dilation=dilation, groups=channels, bias=False)

    def _conv_forward(self, x, weight, bias, undilated=False):
        """This convolution of ``x`` with ``weight`` and ``bias`` (undilated if ``undilated``: on
        the sub-images of :func:`space_to_batch`)."""
        d = self.dilation[0]
        if undilated:
            return F.conv2d(x, weight, bias, 1, 1, 1, self.groups)
        if d == 1 or self.stride[0] != 1:
            return super()._conv_forward(x, weight, bias)
        return dilated_depthwise(x, weight, d, bias)


def _autocast_enabled(device_type):
    """Whether autocast (bf16/fp16) is on for ``device_type`` (torch 2.2-2.3 spelled it per device)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class _RecomputedChain(torch.autograd.Function):
    """Convolutions joined by batch norm + ReLU, ``conv_n(relu(bn_n(... conv_1(relu(bn_1(x))))))``,
    in training, keeping for the backward pass only ``x``, the weights and each batch norm's batch
    statistics; backward recomputes the maps in between (elementwise passes, and the convolutions
    inside the chain, which :func:`run_chain` makes depthwise ones only: cheap in arithmetic).

    A stage may have no batch norm only first: then ``x`` is a depthwise convolution's input and
    its output is recomputed too. Autograd would keep every batch norm's input and every ReLU
    output; at 384px, batch 16 the ReLU outputs were 1.08 of the 3.04 GiB a training step kept,
    the depthwise outputs another 0.47 GiB. The forward pass runs the same aten operators as the
    layers one after the other (``native_batch_norm`` updates the running statistics in place), the
    backward pass the same gradient operators, so outputs, gradients and running statistics equal
    the plain layers' up to float rounding of the recomputed maps (the recomputation of
    "Memory-efficient implementation of DenseNets", Pleiss et al., 2017, with the batch statistics
    kept rather than recomputed). Float32 only: under autocast the plain layers run.

    ``stages``: per stage ``(batch_norm, conv)``, ``batch_norm`` None or ``(momentum, eps)`` and
    ``conv`` ``(stride, padding, dilation, groups)``; ``tensors``: per stage its batch norm's
    ``weight, bias, running_mean, running_var`` (when it has one), then its convolution's weight.
    """

    @staticmethod
    def forward(ctx, x, stages, *tensors):
        params, stats, h, i = [], [], x, 0
        for bn, conv in stages:
            if bn is not None:
                gamma, beta, running_mean, running_var = tensors[i:i + 4]
                h, mean, invstd = torch.ops.aten.native_batch_norm(h, gamma, beta, running_mean, running_var, True,
                                                                   bn[0], bn[1])
                h.relu_()
                params += [gamma, beta]
                stats += [mean, invstd]
                i += 4
            weight = tensors[i]
            i += 1
            params.append(weight)
            h = F.conv2d(h, weight, None, *conv)
        ctx.stages = stages
        ctx.save_for_backward(x, *params, *stats)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, *rest = ctx.saved_tensors
        stages = ctx.stages
        n_bn = sum(bn is not None for bn, _ in stages)
        params, stats = rest[:len(rest) - 2 * n_bn], rest[len(rest) - 2 * n_bn:]
        # the forward pass again, keeping each stage's batch-norm input and convolution input
        kept, h, p, s = [], x, 0, 0
        for k, (bn, conv) in enumerate(stages):
            bn_in, bn_grads = None, None
            if bn is not None:
                gamma, beta = params[p:p + 2]
                mean, invstd = stats[s:s + 2]
                scale = gamma * invstd
                bn_in, h = h, torch.empty_like(h)
                torch.addcmul((beta - mean * scale).view(1, -1, 1, 1), bn_in, scale.view(1, -1, 1, 1), out=h).relu_()
                bn_grads = (gamma, mean, invstd, bn[1])
                p, s = p + 2, s + 2
            weight = params[p]
            p += 1
            kept.append((bn_in, h, weight, conv, bn_grads))
            if k + 1 < len(stages):
                h = F.conv2d(h, weight, None, *conv)
        del h
        # then backward, stage by stage from the last, dropping each stage's maps once used
        needs, grads = ctx.needs_input_grad, []
        g = grad
        for k in range(len(stages) - 1, -1, -1):
            bn_in, z, weight, (stride, padding, dilation, groups), bn_grads = kept.pop()
            want_input = k > 0 or bn_grads is not None or needs[0]
            g, grad_weight, _ = torch.ops.aten.convolution_backward(
                g, z, weight, None, stride, padding, dilation, False, [0, 0], groups, [want_input, True, False])
            grads.append(grad_weight)
            if bn_grads is not None:
                gamma, mean, invstd, eps = bn_grads
                g = torch.ops.aten.threshold_backward(g, z, 0)
                g, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
                    g, bn_in, gamma, None, None, mean, invstd, True, eps, [k > 0 or needs[0], True, True])
                grads += [None, None, grad_beta, grad_gamma]  # running_var, running_mean, bias, weight (reversed)
            del z, bn_in  # this stage's maps, no longer needed
        return (g if needs[0] else None, None, *reversed(grads))


class ConvBNReLU(nn.Sequential):
    """A convolution, batch norm and (unless ``relu=False``) ReLU.

    In evaluation the batch norm, an affine map with its running statistics, is folded into the
    convolution's weight and bias on each call (a few thousand multiplications), which saves a
    pass over every output map; in training it runs as its own layer. ``fold_batchnorm = False``
    (on the class) keeps the separate pass in evaluation too, the reference the tests compare with.
    In float32 training, a chain of these blocks (:func:`run_chain`) keeps no ReLU output that
    feeds the next block's convolution and no depthwise output (:class:`_RecomputedChain`);
    ``recompute_activations = False`` (on the class) keeps them, the reference the tests compare with.
    """

    fold_batchnorm = True
    recompute_activations = True

    def __init__(self, in_ch, out_ch, kernel=1, stride=1, dilation=1, groups=1, relu=True):
        pad = dilation * (kernel - 1) // 2
        if kernel == 3 and groups == in_ch == out_ch and groups > 1:
            conv = DepthwiseConv(in_ch, stride, dilation)
        else:
            conv = nn.Conv2d(in_ch, out_ch, kernel, stride, pad, dilation=dilation, groups=groups, bias=False)
        layers = [conv, nn.BatchNorm2d(out_ch)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)

    def forward(self, x, undilated=False):
        """The block on ``x``; ``undilated``: its depthwise convolution without its dilation (on
        the sub-images of :func:`space_to_batch`)."""
        conv, bn = self[0], self[1]
        fold = not self.training and self.fold_batchnorm and bn.running_var is not None
        if not fold and not undilated:
            return super().forward(x)  # training: the layers one after the other, as built
        weight, bias = conv.weight, conv.bias
        if fold:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = shift if bias is None else bias * scale + shift
        y = self.convolve(x, weight, bias, undilated)
        if not fold:
            y = bn(y)
        return self[2](y) if len(self) > 2 else y

    def convolve(self, x, weight, bias=None, undilated=False):
        """This block's convolution of ``x`` with ``weight`` and ``bias`` (no batch norm)."""
        conv = self[0]
        if isinstance(conv, DepthwiseConv):
            return conv._conv_forward(x, weight, bias, undilated)
        return conv._conv_forward(x, weight, bias)

    def conv_arguments(self, undilated=False):
        """``(stride, padding, dilation, groups)`` of this block's convolution when it is one plain
        ``conv2d`` call without bias, else None (a dilated depthwise one runs rewritten)."""
        conv = self[0]
        if conv.bias is not None:
            return None
        if isinstance(conv, DepthwiseConv) and conv.stride[0] == 1 and conv.dilation[0] > 1:
            return ((1, 1), (1, 1), (1, 1), conv.groups) if undilated else None
        return conv.stride, conv.padding, conv.dilation, conv.groups

    @property
    def depthwise(self):
        """Whether this block's convolution is a 3x3 depthwise one."""
        return isinstance(self[0], DepthwiseConv)

    def recomputable(self):
        """Whether this block's batch norm and ReLU can run inside :class:`_RecomputedChain`: a ReLU, and a
        plain training batch norm (not a subclass such as ``SyncBatchNorm``) with affine weights and
        a fixed momentum."""
        bn = self[1]
        return (len(self) > 2 and type(bn) is nn.BatchNorm2d and bn.training and bn.affine and bn.track_running_stats
                and bn.momentum is not None and bn.running_mean is not None)

    def normalise(self, y):
        """Batch norm and (if any) ReLU of this block's convolution output ``y``."""
        y = self[1](y)
        return self[2](y) if len(self) > 2 else y


def run_chain(blocks, x, undilated=False):
    """The :class:`ConvBNReLU` ``blocks`` one after the other on ``x``.

    In float32 training with gradients, each batch norm and ReLU runs inside a
    :class:`_RecomputedChain` with the next block's convolution, and a depthwise convolution with
    what follows it up to the next dense convolution: the backward pass keeps no ReLU output and
    no depthwise output of the chain, only the dense convolutions' outputs (and ``x``). Otherwise,
    and where blocks cannot be joined, they run as built.
    """
    first = blocks[0]
    if not (first.training and first.recompute_activations and torch.is_grad_enabled()
            and not _autocast_enabled(x.device.type)):
        for block in blocks:
            x = block(x, undilated=undilated)
        return x
    arguments = first.conv_arguments(undilated)
    if first.depthwise and arguments is not None:
        start, stages = x, [(None, first, arguments)]  # x is kept anyway: the depthwise output is recomputed
    else:
        start, stages = first.convolve(x, first[0].weight, first[0].bias, undilated), []
    for prev, block in zip(blocks[:-1], blocks[1:]):
        arguments = block.conv_arguments(undilated)
        if arguments is None or not prev.recomputable():
            y = _run_stages(start, stages)
            start, stages = block.convolve(prev.normalise(y), block[0].weight, block[0].bias, undilated), []
            continue
        stages.append((prev, block, arguments))
        if not block.depthwise:  # a dense convolution's output is kept: recomputing it would cost arithmetic
            start, stages = _run_stages(start, stages), []
    return blocks[-1].normalise(_run_stages(start, stages))


def _run_stages(x, stages):
    """``x`` through ``stages`` (``(block whose batch norm and ReLU come first, or None; block
    whose convolution follows; its conv_arguments)``) as one :class:`_RecomputedChain`."""
    if not stages:
        return x
    spec, tensors = [], []
    for prev, block, arguments in stages:
        bn = None
        if prev is not None:
            norm = prev[1]
            norm.num_batches_tracked.add_(1)  # what nn.BatchNorm2d counts in training
            bn = (norm.momentum, norm.eps)
            tensors += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
        spec.append((bn, arguments))
        tensors.append(block[0].weight)
    return _RecomputedChain.apply(x, tuple(spec), *tensors)


class SeparableConv(nn.Sequential):
    """3x3 depthwise (optionally dilated) + batch norm + ReLU, then 1x1 pointwise + batch norm + ReLU."""

    def __init__(self, in_ch, out_ch, dilation=1, stride=1):
        super().__init__(ConvBNReLU(in_ch, in_ch, 3, stride, dilation, groups=in_ch),
                         ConvBNReLU(in_ch, out_ch, 1))

    def forward(self, x):
        return run_chain(list(self), x)


class SeparableResidual(nn.Module):
    """A depthwise-separable block with a residual (a 1x1 projection when widths differ)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.dw = ConvBNReLU(in_ch, in_ch, 3, groups=in_ch)
        self.pw = ConvBNReLU(in_ch, out_ch, 1, relu=False)
        self.short = None if in_ch == out_ch else ConvBNReLU(in_ch, out_ch, 1, relu=False)

    def forward(self, x):
        y = run_chain([self.dw, self.pw], x)
        return F.relu(y + (x if self.short is None else self.short(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise (stride, dilation), 1x1 linear projection."""

    def __init__(self, in_ch, out_ch, stride=1, dilation=1, expansion=4.0):
        super().__init__()
        hidden = max(8, int(round(in_ch * expansion)))
        self.use_res = stride == 1 and in_ch == out_ch
        self.dilation = dilation if stride == 1 else 1
        layers = []
        if hidden != in_ch:
            layers.append(ConvBNReLU(in_ch, hidden, 1))
        layers += [ConvBNReLU(hidden, hidden, 3, stride, dilation, groups=hidden),
                   ConvBNReLU(hidden, out_ch, 1, relu=False)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        d = self.dilation
        if d > 1 and x.shape[2] % d == 0 and x.shape[3] % d == 0:
            # The whole block on the sub-images of space_to_batch: 1x1 convolutions act per pixel
            # and batch norm's statistics are sums over all pixels, so only the depthwise
            # convolution notices the layout, and there it is the undilated one. Rearranging the
            # narrow block input and output instead of the expanded map around the depthwise
            # convolution moves 1/expansion of the bytes (the rearranging copies took 12% of a
            # training step at 384px). With padding the zeros would enter the statistics: then
            # only the depthwise convolution is rewritten (DepthwiseConv).
            xs = space_to_batch(x, d)
            y = run_chain(list(self.body), xs, undilated=True)
            return batch_to_space(xs + y if self.use_res else y, d)
        y = run_chain(list(self.body), x)
        return x + y if self.use_res else y


class FusedInvertedResidual(nn.Module):
    """Fused-MBConv block: one dense 3x3 expanding convolution (with the stride), 1x1 linear projection.

    Used where the encoder halves the resolution: a dense strided 3x3 convolution on few
    channels runs on oneDNN's fast path, where a strided depthwise one trains slowly on CPU.
    """

    def __init__(self, in_ch, out_ch, stride=1, expansion=4.0):
        super().__init__()
        hidden = max(8, int(round(in_ch * expansion)))
        self.use_res = stride == 1 and in_ch == out_ch
        self.body = nn.Sequential(ConvBNReLU(in_ch, hidden, 3, stride), ConvBNReLU(hidden, out_ch, 1, relu=False))

    def forward(self, x):
        y = run_chain(list(self.body), x)
        return x + y if self.use_res else y


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with depthwise-separable atrous branches and image pooling."""

    def __init__(self, in_ch, out_ch, rates=(6, 12, 18), dropout=0.1):
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(in_ch, out_ch, 1)]
                                      + [SeparableConv(in_ch, out_ch, dilation=r) for r in rates])
        # no batch norm on the pooled branch: a 1 x 1 map of a batch of one has no batch statistics
        self.pool = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.ReLU(inplace=True))
        self.project = ConvBNReLU(out_ch * (len(rates) + 2), out_ch, 1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x):
        outs = [branch(x) for branch in self.branches]
        pooled = self.pool(x.mean((2, 3), keepdim=True))
        outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.dropout(self.project(torch.cat(outs, 1)))


class DeepLabV3Plus(nn.Module):
    def __init__(self, num_classes=19, in_channels=3, stem_channels=16, widths=(24, 32, 64, 160),
                 depths=(1, 2, 3, 6), expansion=4.0, output_stride=16, dilations=(1, 2), aspp_channels=128,
                 aspp_rates=(2, 4, 6), decoder_channels=(32, 96), dropout=0.1):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        if len(widths) != 4 or len(depths) != 4 or min(depths) < 1:
            raise ValueError("widths and depths need 4 entries each (1/2, 1/4, 1/8, deep stage), depths >= 1")
        mean, std = _band_statistics(in_channels)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        w2, w4, w8, wd = widths
        # 1/2: a dense strided stem, then depthwise-separable residual blocks
        stem = [ConvBNReLU(in_channels, stem_channels, 3, 2)]
        prev = stem_channels
        for _ in range(depths[0]):
            stem.append(SeparableResidual(prev, w2))
            prev = w2
        self.stem = nn.Sequential(*stem)

        def stage(in_ch, out_ch, depth, stride, dil_cycle, fused):
            first = (FusedInvertedResidual(in_ch, out_ch, stride, expansion) if fused
                     else InvertedResidual(in_ch, out_ch, stride, 1, expansion))
            blocks = [first]
            for i in range(1, depth):
                blocks.append(InvertedResidual(out_ch, out_ch, 1, dil_cycle[i % len(dil_cycle)], expansion))
            return nn.Sequential(*blocks)

        self.quarter = stage(w2, w4, depths[1], 2, (1,), fused=True)
        self.eighth = stage(w4, w8, depths[2], 2, (1,), fused=True)
        self.deep = stage(w8, wd, depths[3], 2 if output_stride == 16 else 1, tuple(dilations), fused=False)
        self.aspp = ASPP(wd, aspp_channels, tuple(aspp_rates), dropout)
        # decoder, FPN-like: project to the next width, upsample, add the projected skip, refine
        d2, d4 = decoder_channels
        self.up4 = ConvBNReLU(aspp_channels, d4, 1, relu=False)
        self.skip4 = ConvBNReLU(w4, d4, 1, relu=False)
        self.dec4 = nn.Sequential(SeparableConv(d4, d4), SeparableConv(d4, d4))
        self.up2 = ConvBNReLU(d4, d2, 1, relu=False)
        self.skip2 = ConvBNReLU(w2, d2, 1, relu=False)
        self.dec2 = SeparableConv(d2, d2)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(d2, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_coarse(self, x):
        """Float32 logits at 1/2 of the input size (``ceil(H/2) x ceil(W/2)``), plain NCHW."""
        # channels-last is the fast layout for oneDNN convolutions on CPU
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        f2 = self.stem(x)
        f4 = self.quarter(f2)
        y = self.aspp(self.deep(self.eighth(f4)))
        y = F.relu(_up(self.up4(y), f4.shape[-2:]) + self.skip4(f4))
        y = self.dec4(y)
        y = F.relu(_up(self.up2(y), f2.shape[-2:]) + self.skip2(f2))
        y = self.dec2(y)
        return self._classify(y)

    def _classify(self, y):
        """``classifier(dropout(y))`` as one batched matrix product that writes NCHW float32.

        ``y`` is channels-last, so each image is an ``HW x C`` matrix and the 1x1 classifier
        its product with the ``K x C`` weight; computing ``weight @ y^T`` gives the logits in
        NCHW directly (bilinear upsampling of a few channels is twice as fast in NCHW), with
        no separate transposing copy of the logits. The channel dropout (``Dropout2d``: one
        Bernoulli draw per image and channel, scaled by ``1 / (1 - p)``, drawn exactly as
        ``F.dropout2d`` draws it) multiplies a column of the image's weight instead of a
        whole map of ``y``. Both copies took 9% of a training step at 384px.
        """
        b, c, h, w = y.shape
        weight = self.classifier.weight.reshape(1, -1, c)
        if self.training and self.dropout.p > 0:
            p = self.dropout.p
            keep = y.new_empty(b, 1, c).bernoulli_(1 - p).div_(1 - p) if p < 1 else y.new_zeros(b, 1, c)
            weight = weight * keep
        else:
            weight = weight.expand(b, -1, -1)
        pixels = y.permute(0, 2, 3, 1).reshape(b, h * w, c).transpose(1, 2)  # a view when channels-last
        out = torch.baddbmm(self.classifier.bias.reshape(1, -1, 1), weight.to(pixels.dtype), pixels)
        return out.reshape(b, -1, h, w).float()

    def forward(self, x):
        # plain NCHW float32 logits at the input size, whatever precision the body ran in
        return _up(self.forward_coarse(x), x.shape[-2:])


def build_dlv3p(num_classes=19, stem_channels=16, widths=(24, 32, 64, 160), depths=(1, 2, 3, 6),
                expansion=4.0, output_stride=16, dilations=(1, 2), aspp_channels=128,
                aspp_rates=(2, 4, 6), decoder_channels=(32, 96), dropout=0.1, in_channels=3):
    """Build the network from plain values.

    :param in_channels: image bands (3: RGB; see :func:`_band_statistics` for the others).
    :param stem_channels: width of the stride-2 stem convolution.
    :param widths: widths of the 1/2, 1/4, 1/8 and deep stages.
    :param depths: blocks per stage (separable residual blocks at 1/2, inverted residuals after).
    :param expansion: hidden-width multiple of the inverted-residual blocks.
    :param output_stride: 16 (deep stage at 1/16) or 8 (deep stage dilated, at 1/8).
    :param dilations: deep-stage block ``i > 0`` uses ``dilations[i % len(dilations)]``.
    :param aspp_channels: width of each ASPP branch and of its output.
    :param aspp_rates: dilations of the separable ASPP branches, on the deep map.
    :param decoder_channels: widths of the decoder at 1/2 and 1/4.
    :param dropout: channel dropout after ASPP and before the classifier.
    """
    return DeepLabV3Plus(num_classes=num_classes, in_channels=in_channels, stem_channels=stem_channels,
                         widths=tuple(widths),
                         depths=tuple(depths), expansion=expansion, output_stride=output_stride,
                         dilations=tuple(dilations), aspp_channels=aspp_channels, aspp_rates=tuple(aspp_rates),
                         decoder_channels=tuple(decoder_channels),
                         dropout=dropout)
