"""The built-in loss terms as functions of float32 logits ``B x C x H x W`` and class ids
``B x H x W``: cross-entropy, soft Dice (and both fused in one pass), focal, Lovasz-softmax,
OHEM cross-entropy and boundary-weighted cross-entropy. :mod:`cpx_plugins.losses` wraps each in
a configurable module and registers it; the conventions (ignored pixels, class weights, float32)
are described there.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

# --- ignored pixels ---


def kept_pixels(target: torch.Tensor, num_classes: int, ignore_index: Optional[int] = None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(target, keep)``: the target with ignored pixels relabelled 0, and ``keep``, ``B x H x W``
    of ``dtype``, 1 at the other pixels and 0 at ignored ones (``None`` without ``ignore_index``).

    Relabelling lets gathers, scatters and bincounts index every pixel safely; each term then
    multiplies by ``keep`` so the stand-in id adds nothing. Raises ``ValueError`` when the
    target holds an id that is neither a class id (``0..num_classes-1``) nor ``ignore_index``.
    """
    outside = (target < 0) | (target >= num_classes)
    ignored = None if ignore_index is None else target == ignore_index
    if ignored is not None:
        outside &= ~ignored
    # one reduction per call (a device sync on a GPU) buys an error that names the bad id;
    # an out-of-range gather would fail, on a GPU, as an opaque device-side assert
    if bool(outside.any()):
        bad = int(target[outside][0])
        hint = (f" nor the ignore index {ignore_index}" if ignore_index is not None else
                "; pass ignore_index (cpx marks ignored pixels 255) if that id marks pixels to ignore")
        raise ValueError(f"target holds id {bad}, which is not a class id of {num_classes}-class logits "
                         f"(0..{num_classes - 1}){hint}")
    if ignored is None:
        return target, None
    return target.masked_fill(ignored, 0), (~ignored).to(dtype)


def _masked_mean(values: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """``sum(weights * values) / sum(weights)``; 0, not 0/0, when every weight is 0."""
    if weights is None:
        return values.mean()
    return (weights * values).sum() / weights.sum().clamp_min(1e-12)


def _pixel_weights(target: torch.Tensor, keep: Optional[torch.Tensor],
                   weight: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Each pixel's share of a weighted mean: its class weight, times 0 when ignored."""
    if weight is None:
        return keep
    w = weight[target]
    return w if keep is None else w * keep


# --- the terms, on float32 logits ---


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  label_smoothing: float = 0.0, ignore_index: Optional[int] = None) -> torch.Tensor:
    """``F.cross_entropy``; with ``ignore_index``, 0 rather than NaN when every pixel is ignored."""
    if ignore_index is None:
        kept_pixels(target, logits.shape[1])
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    safe, keep = kept_pixels(target, logits.shape[1], ignore_index, logits.dtype)
    # a sum over the kept pixels divided by their summed weights is F.cross_entropy's mean,
    # without its 0/0 when nothing is kept
    total = F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing,
                            ignore_index=ignore_index, reduction="sum")
    return total / _pixel_weights(safe, keep, weight).sum().clamp_min(1e-12)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
              ignore_index: Optional[int] = None) -> torch.Tensor:
    """1 - mean over classes of the Dice score, each class pooled over the whole batch.

    The readable definition: training uses :func:`ce_dice`, which computes the same value and
    gradient faster and is tested against this.

    Pooling over the batch rather than per image keeps small parts (ears, eyes) that are absent
    from one image from yielding a meaningless 0/0 score. Ignored pixels count in no class's
    sums, neither as target nor as prediction.
    """
    num_classes = logits.shape[1]
    target, keep = kept_pixels(target, num_classes, ignore_index, logits.dtype)
    probs = logits.softmax(dim=1)
    flat_target = target.reshape(-1)
    # the intersection only needs each pixel's probability of its own class, which avoids
    # materialising a B x C x H x W one-hot target
    own = probs.gather(1, target.unsqueeze(1)).reshape(-1)
    if keep is None:
        target_count = torch.bincount(flat_target, minlength=num_classes).to(probs.dtype)
        prob_sum = probs.sum(dim=(0, 2, 3))
    else:
        own = own * keep.reshape(-1)
        target_count = probs.new_zeros(num_classes).scatter_add(0, flat_target, keep.reshape(-1))
        prob_sum = (probs * keep.unsqueeze(1)).sum(dim=(0, 2, 3))
    intersection = probs.new_zeros(num_classes).scatter_add(0, flat_target, own)
    dice = (2 * intersection + smooth) / (prob_sum + target_count + smooth).clamp_min(1e-7)
    loss = 1 - dice.mean()
    # with smooth = 0 an empty batch would score 1; nothing kept is nothing to learn: 0
    return loss if keep is None else loss * keep.amax()


class _SoftmaxCEDice(torch.autograd.Function):
    """``ce_w * cross-entropy + dice_w * soft Dice`` from one softmax, with a derived gradient.

    Autograd runs softmax and log-softmax separately and writes and zero-fills several more
    B x C x H x W buffers for the gathers and scatters; at 512px and batch 8 on a CPU that was a
    quarter of a training step. Here one log-softmax pass (exponentiated in place) serves
    both terms and the backward is two passes over the probabilities. Values and gradients
    equal :func:`cross_entropy` and :func:`soft_dice` (tests compare both, and gradcheck).

    Returns the weighted total and the two unweighted terms (these are not differentiable).
    Cross-entropy follows ``F.cross_entropy``: class weights normalise by the summed weights
    of the target pixels, and label smoothing mixes in the weighted mean of -log p over classes.

    ``keep`` (``B x H x W``, 1 for kept and 0 for ignored pixels, or None for all kept) comes
    with a ``target`` whose ignored pixels hold any class id (see :func:`kept_pixels`): it
    scales every pixel's share of the sums, and the gradient at ignored pixels is exactly 0.
    Ignored pixels leave the backward through the saved ``probs`` and ``own``, zeroed there.

    The backward pass writes the gradient over the saved probabilities instead of a new
    ``B x C x H x W`` buffer (171 MiB at 384px, batch 16, at the peak of a training step), so it
    runs once per graph: a second pass (``retain_graph``) raises ``RuntimeError``. Setting
    ``reuse_probs = False`` on the class keeps them (for ``gradcheck``; the reference the tests
    compare with).
    """

    reuse_probs = True

    @staticmethod
    def forward(ctx, logits, target, ce_w: float, dice_w: float, weight, eps: float, smooth: float, keep):
        num_classes = logits.shape[1]
        index = target.unsqueeze(1)
        log_p = F.log_softmax(logits, dim=1)
        own_log = log_p.gather(1, index).squeeze(1)
        if keep is not None:
            keep = keep.to(logits.dtype)
        if weight is None:
            w_total = float(num_classes)
        else:
            weight = weight.to(logits.dtype)
            w_total = weight.sum()
        pixel_w = _pixel_weights(target, keep, weight)
        # clamped: with every pixel ignored (or of zero weight) the sums below are all 0
        w_sum = float(target.numel()) if pixel_w is None else pixel_w.sum().clamp_min(1e-12)
        nll = -(own_log if pixel_w is None else own_log * pixel_w).sum() / w_sum
        ce = nll
        if eps:
            spread = log_p.sum(1) if weight is None else (log_p * weight.view(1, -1, 1, 1)).sum(1)
            if keep is not None:
                spread = spread * keep
            ce = (1 - eps) * nll - eps * spread.sum() / (w_sum * num_classes)
        probs = log_p.exp_()  # log_p is ours: reuse its memory
        own = own_log.exp()
        flat = target.reshape(-1)
        if keep is None:
            target_count = torch.bincount(flat, minlength=num_classes).to(probs.dtype)
        else:
            # Zeroing an ignored pixel's probabilities (in place, like exp_ above) takes it out
            # of the sums here and, as every gradient term but label smoothing's is a multiple
            # of them or of own, out of the backward too. Summing the masked map was 8x faster
            # than a masked einsum on CPU.
            probs.mul_(keep.unsqueeze(1))
            own = own * keep
            target_count = probs.new_zeros(num_classes).scatter_add_(0, flat, keep.reshape(-1))
        intersection = probs.new_zeros(num_classes).scatter_add_(0, flat, own.reshape(-1))
        denom = (probs.sum(dim=(0, 2, 3)) + target_count + smooth).clamp_min(1e-7)
        per_class = (2 * intersection + smooth) / denom
        dice = 1 - per_class.mean()
        if keep is not None:
            # nothing kept, nothing to learn: 0 even when smooth = 0 would make it 1 (the
            # gradient is 0 either way, so backward needs no term for this factor)
            dice = dice * keep.amax()
        ctx.save_for_backward(probs, target, own, pixel_w, weight, denom, per_class, keep)
        ctx.args = (ce_w, dice_w, eps, w_sum, w_total)
        total = ce_w * ce + dice_w * dice
        ce, dice = ce.detach(), dice.detach()
        ctx.mark_non_differentiable(ce, dice)
        return total, ce, dice

    @staticmethod
    def backward(ctx, grad, _grad_ce, _grad_dice):
        if getattr(ctx, "spent", False):
            raise RuntimeError("ce_dice: a second backward pass through the same graph (retain_graph): the first "
                               "wrote its gradient over the saved probabilities; set "
                               "cpx_plugins.loss_functions._SoftmaxCEDice.reuse_probs = False to keep them")
        probs, target, own, pixel_w, weight, denom, per_class, keep = ctx.saved_tensors
        ce_w, dice_w, eps, w_sum, w_total = ctx.args
        num_classes = probs.shape[1]
        # d dice / d p_ic = a_c [y_i = c] + b_c; through the softmax this becomes
        # p_ic (a_c [y_i = c] + b_c - s_i) with s_i = a_{y_i} p_{i y_i} + sum_c p_ic b_c
        a = (-2.0 / num_classes) / denom * (dice_w * grad)
        b = (per_class / num_classes) / denom * (dice_w * grad)
        a_own = a[target] * own
        k = (1.0 / w_sum if pixel_w is None else pixel_w / w_sum) * (ce_w * grad)
        s = a_own.clone()
        for c in range(num_classes):  # a class at a time: einsum would first copy probs to B x HW x C
            s.add_(probs[:, c] * b[c])
        alpha = (1 - eps) * k + (eps * ce_w * grad) * w_total / (num_classes * w_sum) - s
        beta = a_own - (1 - eps) * k
        if not isinstance(alpha, torch.Tensor):
            alpha = torch.full_like(own, alpha)
        if not isinstance(beta, torch.Tensor):
            beta = torch.full_like(own, beta)
        if _SoftmaxCEDice.reuse_probs:
            # the gradient p_ic (alpha_i + b_c) written over the probabilities, a class at a time
            ctx.spent = True
            out, scale = probs, torch.empty_like(alpha)
            for c in range(num_classes):
                out[:, c].mul_(torch.add(alpha, b[c], out=scale))
        else:
            out = probs * alpha.unsqueeze(1)
            out.addcmul_(probs, b.view(1, -1, 1, 1))
        out.scatter_add_(1, target.unsqueeze(1), beta.unsqueeze(1))
        if eps:
            w = torch.ones_like(b) if weight is None else weight
            step = (-eps * ce_w * grad / (num_classes * w_sum)) * w.view(1, -1, 1, 1)
            if keep is None:
                out.add_(step)
            else:
                # the one term that is no multiple of probs or own: masked here
                out.addcmul_(keep.unsqueeze(1), step)
        return out, None, None, None, None, None, None, None


def ce_dice(logits: torch.Tensor, target: torch.Tensor, ce_weight: float, dice_weight: float,
            weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
            smooth: float = 1.0, ignore_index: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ce_weight * CE + dice_weight * Dice, CE, Dice)`` in one fused pass (see ``_SoftmaxCEDice``),
    the pixels holding ``ignore_index`` left out."""
    target, keep = kept_pixels(target, logits.shape[1], ignore_index, logits.dtype)
    return _SoftmaxCEDice.apply(logits, target, float(ce_weight), float(dice_weight), weight,
                                float(label_smoothing), float(smooth), keep)


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
          weight: Optional[torch.Tensor] = None, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Focal loss, normalised like weighted cross-entropy, so gamma=0 reproduces it exactly."""
    target, keep = kept_pixels(target, logits.shape[1], ignore_index, logits.dtype)
    log_p = logits.log_softmax(dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -log_p
    if gamma:
        loss = (1 - log_p.exp()).clamp_min(0).pow(gamma) * loss
    return _masked_mean(loss, _pixel_weights(target, keep, weight))


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss (Berman et al. 2018, eq. 8-9).

    ``fg_sorted``: ``K x N`` 0/1 foreground indicators, each row sorted by decreasing error.
    Returns the ``K x N`` weights whose dot product with the sorted errors is the loss.
    """
    gts = fg_sorted.sum(1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(1)
    union = gts + (1 - fg_sorted).cumsum(1)
    jaccard = 1 - intersection / union.clamp_min(1e-12)
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)


def _lovasz_flat(probs: torch.Tensor, labels: torch.Tensor, classes: str,
                 keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    # probs: C x N, labels: N, keep: N (1 kept, 0 ignored) or None
    num_classes = probs.shape[0]
    fg = (labels.unsqueeze(0) == torch.arange(num_classes, device=labels.device).unsqueeze(1)).to(probs.dtype)
    errors = (fg - probs).abs()
    if keep is not None:
        # An ignored pixel becomes background of every class with error 0: it sorts after
        # every pixel with an error, so the Jaccard steps of those (the only products that
        # are not 0) see the same counts as without it, and its constant 0 has no gradient.
        fg = fg * keep
        errors = errors * keep
    errors_sorted, order = errors.sort(dim=1, descending=True)
    per_class = (errors_sorted * _lovasz_grad(fg.gather(1, order))).sum(1)
    if classes == "present":
        present = fg.sum(1) > 0
        if not bool(present.any()):
            return probs.sum() * 0.0
        return per_class[present].mean()
    return per_class.mean()


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, per_image: bool = False,
                   classes: str = "present", ignore_index: Optional[int] = None) -> torch.Tensor:
    """Lovasz-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018): for each class, the
    Lovasz extension of the Jaccard loss applied to the errors ``|[y = c] - p_c|``, averaged
    over the classes present (or all). All classes are sorted at once (one ``C x N`` sort).
    ``per_image`` averages over the images with at least one pixel not ignored."""
    c = logits.shape[1]
    target, keep = kept_pixels(target, c, ignore_index, logits.dtype)
    probs = logits.softmax(1)
    if per_image:
        masks = [None] * len(probs) if keep is None else [k.reshape(-1) for k in keep]
        values = torch.stack([_lovasz_flat(p.reshape(c, -1), t.reshape(-1), classes, k)
                              for p, t, k in zip(probs, target, masks)])
        if keep is None:
            return values.mean()
        # a wholly ignored image has nothing to score; counting its 0 would dilute the others
        return _masked_mean(values, keep.flatten(1).amax(1))
    flat_keep = None if keep is None else keep.reshape(-1)
    return _lovasz_flat(probs.transpose(0, 1).reshape(c, -1), target.reshape(-1), classes, flat_keep)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, threshold: Optional[float] = 0.7,
                       keep_fraction: Optional[float] = None, min_kept: int = 1,
                       weight: Optional[torch.Tensor] = None, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Cross-entropy over the hardest pixels only (online hard example mining).

    Keeps the ``k`` pixels of highest cross-entropy, ``k = max(min_kept, pixels whose
    true-class probability is below threshold, ceil(keep_fraction * pixels))``, at most every
    pixel. Since cross-entropy falls as that probability rises, the pixels under the threshold
    are exactly the hardest ones, so every rule selects from the same ranking. The kept pixels
    are averaged like weighted cross-entropy (normalised by their summed class weights).
    Ignored pixels are never selected, and "pixels" above counts only the others.
    """
    target, keep = kept_pixels(target, logits.shape[1], ignore_index, logits.dtype)
    nll = F.cross_entropy(logits, target, reduction="none").reshape(-1)
    flat_target = target.reshape(-1)
    rank = nll.detach()
    if keep is None:
        n = nll.numel()
    else:
        flat_keep = keep.reshape(-1) > 0
        n = int(flat_keep.sum())
        if n == 0:
            return (nll * 0).sum()  # nothing kept: 0, still part of the graph
        # ignored pixels rank below every kept one, so a top-k with k <= n never picks them
        rank = rank.masked_fill(~flat_keep, -math.inf)
    k = min_kept
    if threshold is not None:
        hard = rank > -math.log(threshold)
        k = max(k, int(hard.sum()))
    if keep_fraction is not None:
        k = max(k, math.ceil(keep_fraction * n))
    k = min(k, n)
    if k < nll.numel():
        index = rank.topk(k, sorted=False).indices
        nll, flat_target = nll[index], flat_target[index]
    return _masked_mean(nll, None if weight is None else weight[flat_target])


def boundary_band(target: torch.Tensor, width: int, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``B x H x W`` bool: pixels with a pixel of another class within ``width`` pixels
    (a ``2 width + 1`` square window), from a max-pool dilation and erosion of the labels.

    With ``keep`` (1 kept, 0 ignored), only kept pixels count, as centres and as neighbours:
    the edge of an ignored area (letterbox padding, an unlabelled region) is no class edge.
    """
    labels = target.unsqueeze(1).float()
    k = 2 * width + 1
    if keep is None:
        dilated = F.max_pool2d(labels, k, 1, width)
        eroded = -F.max_pool2d(-labels, k, 1, width)
        return (dilated != eroded).squeeze(1)
    kept = keep.unsqueeze(1) > 0
    # an ignored pixel takes -inf for the maximum and +inf for the minimum, so it decides
    # neither; a kept centre always has its own id in its window, so both stay finite there
    dilated = F.max_pool2d(labels.masked_fill(~kept, -math.inf), k, 1, width)
    eroded = -F.max_pool2d(-labels.masked_fill(~kept, math.inf), k, 1, width)
    return ((dilated != eroded) & kept).squeeze(1)


def boundary_cross_entropy(logits: torch.Tensor, target: torch.Tensor, width: int = 2, band_weight: float = 5.0,
                           weight: Optional[torch.Tensor] = None, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Cross-entropy with pixels in the band around label edges weighted ``band_weight`` times
    (times their class weight), normalised by the summed pixel weights (see :func:`boundary_band`
    for ignored pixels)."""
    target, keep = kept_pixels(target, logits.shape[1], ignore_index, logits.dtype)
    nll = F.cross_entropy(logits, target, reduction="none")
    w = 1.0 + (band_weight - 1.0) * boundary_band(target, width, keep).to(nll.dtype)
    if weight is not None:
        w = w * weight[target]
    if keep is not None:
        w = w * keep
    return (w * nll).sum() / w.sum().clamp_min(1e-12)
