#!/usr/bin/env python3
"""Predict segmentation masks: one image to one mask, or a folder of images to a folder of masks.

    python run.py --input img.jpg --output mask.png [--weights ckpt.pth] [--device cpu]
    python run.py --input IMAGES --output MASKS [--weights ckpt.pth] [--device cpu]

A mask is a single-channel PNG, the size of its image, holding the competition's stored
value of each pixel's class (its palette for mode P); from a folder, each is named after its
image (model.json's ``mask_name``, ``{stem}.png`` by default). Needs only torch, numpy and
Pillow (requirements.txt); the network is defined in the module named in model.json, next to
this file, and model.json holds every setting of the prediction.

The prediction is the one that made the packaged masks, step by step: the uint8 image (the
model's channels) is resized for the model's square canvas (bilinear, antialiased, on uint8:
a square image to the canvas, another with its long side to the canvas side, the rest padded
with zeros right and below), scaled to [0, 1] and fed channels-last, in sliding windows when
model.json gives ``tile``; with test-time augmentation each view (mirrored, or resized by
another scale) gives logits, a mirrored view's are mirrored back with the left/right classes
swapped, and the views' logits are summed; padding is cropped away, logits (never class ids)
are resized back to the image's size (bilinear, align_corners=False) and the class is the
first maximum. Views of one size of a model with ``forward_coarse`` are summed at the model's
coarse resolution and resized once. Images of one size go through the model together, in
batches of ``batch_size`` in the order of (size, file name), as cpx predicted them.

(This file is cpx's ``solution/run.py`` template: it is copied verbatim into every submission
and must import nothing but torch, numpy, Pillow and the standard library.)
"""

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent


def read_config(folder=HERE):
    """model.json: the network, input size, TTA views and scales, palette and file suffixes."""
    return json.loads((Path(folder) / "model.json").read_text())


def load_model(weights, device, config, folder=HERE):
    """The network of model.json with the weights of ``weights``, channels-last, in eval mode."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    module = importlib.import_module(config["module"])
    model = getattr(module, config["builder"])(**config["kwargs"])
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        # model.json's weight_keys: the keys cpx accepts, the competition's own first
        for key in config.get("weight_keys") or [config.get("weights_key", "state_dict")]:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    model.load_state_dict(state)
    return model.to(memory_format=torch.channels_last).to(device).eval()


def read_image(path, channels=3):
    """The image as a C x H x W uint8 tensor (C = ``channels``: 1 greyscale, 3 RGB, 4 RGBA)."""
    with Image.open(path) as img:
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
        arr = np.asarray(img if img.mode == mode else img.convert(mode))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def fit_size(hw, side):
    """The size of an image of (height, width) ``hw`` on a square canvas of ``side``: the
    canvas for a square image, else the long side on the canvas side, the aspect kept."""
    h, w = int(hw[0]), int(hw[1])
    if h == w:
        return side, side
    long = max(h, w)
    return max(1, round(h * side / long)), max(1, round(w * side / long))


def resize_uint8(x, hw):
    """A uint8 batch resized bilinearly with antialiasing (as uint8 on a CPU)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    if x.device.type == "cpu":
        return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(x.float(), size=tuple(hw), mode="bilinear", align_corners=False,
                         antialias=True).round_().clamp_(0, 255).to(torch.uint8)


def tile_starts(length, tile, stride):
    """Window starts along one side, every ``stride``, the last flush with the end."""
    if length <= tile:
        return [0]
    count = (length - tile + stride - 1) // stride + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


def tiled(model, x, tile, num_classes, overlap):
    """Logits from tile x tile windows overlapping by ``overlap``, averaged where they overlap."""
    b, _, h, w = x.shape
    stride = max(1, int(round(tile * (1 - overlap))))
    total = torch.zeros(b, num_classes, h, w, dtype=torch.float32, device=x.device)
    count = torch.zeros(1, 1, h, w, dtype=torch.float32, device=x.device)
    for top in tile_starts(h, tile, stride):
        for left in tile_starts(w, tile, stride):
            window = x[..., top:top + tile, left:left + tile]
            total[..., top:top + tile, left:left + tile] += model(window).float()
            count[..., top:top + tile, left:left + tile] += 1
    return total.div_(count)


def resize_logits(logits, size):
    """B x C x H x W logits resized bilinearly (align_corners=False) to ``size`` = (H', W')."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def class_ids(scores):
    """The first maximum over the class dimension, as uint8: a running maximum over the
    contiguous class planes (the same ids as ``scores.argmax(1)``, faster on a CPU)."""
    classes = scores.shape[1]
    if scores.device.type != "cpu" or classes > 256 or classes < 2:
        return scores.argmax(1).to(torch.uint8)
    planes = scores.unbind(1)
    best = planes[0].clone()
    ids = torch.zeros(best.shape, dtype=torch.uint8)
    better = torch.empty(best.shape, dtype=torch.bool)
    for c in range(1, classes):
        torch.gt(planes[c], best, out=better)
        ids.masked_fill_(better, c)
        torch.maximum(best, planes[c], out=best)
    return ids


def view_logits(model, x, flip, side, coarse, config):
    """Float32 logits of one view of the uint8 batch ``x`` at its size on a ``side`` canvas,
    the padding cropped away (still mirrored for a mirrored view)."""
    fh, fw = fit_size(x.shape[-2:], side)
    # resized as uint8, these are exactly the pixels Pillow gave the model in training
    x = resize_uint8(x, (fh, fw))
    if flip:
        x = x.flip(-1)
    x = x.float().div(255)
    if (fh, fw) != (side, side):
        x = F.pad(x, (0, side - fw, 0, side - fh))
    x = x.contiguous(memory_format=torch.channels_last)
    tile = config.get("tile")
    if tile and tile < side:
        logits = tiled(model, x, int(tile), int(config["num_classes"]), float(config.get("tile_overlap", 1 / 3)))
    else:
        logits = model.forward_coarse(x) if coarse else model(x)
    logits = logits.float()
    return logits[..., :fh, :fw] if (fh, fw) != (side, side) else logits


@torch.inference_mode()
def predict(model, images, device, config):
    """Class ids (B x H x W uint8 numpy array) for a B x C x H x W uint8 batch of one size, at
    that size."""
    size = int(config["image_size"])
    tta = config.get("tta") or []
    scales = [float(s) for s in config.get("scales") or [1.0]] if "scale" in tta else [1.0]
    flips = [False, True] if "flip" in tta else [False]
    views = [(flip, scale) for scale in scales for flip in flips]
    swap = config.get("flip_permutation") or list(range(int(config["num_classes"])))
    out_hw = tuple(images.shape[-2:])
    x = images.to(device)
    coarse = (len(views) > 1 and all(scale == 1.0 for _, scale in views) and out_hw[0] == out_hw[1]
              and not config.get("tile") and callable(getattr(model, "forward_coarse", None)))
    summed = None
    for flip, scale in views:
        side = max(1, int(round(size * scale)))
        logits = view_logits(model, x, flip, side, coarse, config)
        if not coarse:
            logits = resize_logits(logits, out_hw)
        if summed is None and not flip:
            summed = logits
            continue
        if summed is None:
            summed = torch.zeros_like(logits)
        if flip:
            # mirrored back, a left eye in the mirrored face being the right eye of this one
            for c, source in enumerate(swap):
                summed[:, c].add_(logits[:, source].flip(-1))
        else:
            summed.add_(logits)
    if coarse:
        summed = resize_logits(resize_logits(summed, (size, size)), out_hw)
    if config.get("logit_offsets"):
        # per-class offsets fitted for the per-image F (cpx calibrate), on the views' mean
        # logits, so n_views times them on the sum
        offsets = torch.tensor(config["logit_offsets"], dtype=torch.float32, device=summed.device)
        summed.add_((offsets * len(views)).view(1, -1, 1, 1))
    return class_ids(summed).cpu().numpy()


def load_postprocess(config, folder=HERE):
    """The post-processing steps of model.json (``postprocess``: module, function, kwargs),
    each a ``mask -> mask`` function of a module beside this file."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    steps = []
    for step in config.get("postprocess") or []:
        function = getattr(importlib.import_module(step["module"]), step["function"])
        steps.append(lambda mask, f=function, kw=step["kwargs"]: f(mask, **kw))
    return steps


def write_mask(path, mask, config):
    """Save H x W uint8 class ids as the competition stores masks: each id's stored value
    (``mask_values``), a palette PNG (mode P, the stored value being the palette index) or a
    greyscale one (mode L)."""
    stored = np.asarray(config["mask_values"], dtype=np.uint8)[mask] if config.get("mask_values") else mask
    stored = np.ascontiguousarray(stored.astype(np.uint8))
    if config.get("mask_mode", "P") == "P":
        # built from raw bytes so every value stays its own palette index
        img = Image.frombytes("P", (stored.shape[1], stored.shape[0]), stored.tobytes())
        img.putpalette(config["palette"])
    else:
        img = Image.fromarray(stored, mode="L")
    img.save(path, format="PNG")


def mask_name(image_path, config):
    """The mask file name of an image file (model.json's ``mask_name``: {stem} or {name})."""
    pattern = config.get("mask_name") or "{stem}" + config["mask_suffix"]
    return pattern.format(stem=Path(image_path).stem, name=Path(image_path).name)


def plan(source, target, config):
    """(image, mask path) pairs: one for a file, one per image for a folder."""
    source = Path(source)
    if source.is_file():
        target_path = Path(target)
        if target_path.is_dir() or str(target).endswith(("/", "\\")):
            target_path = target_path / mask_name(source, config)
        return [(source, target_path)]
    if not source.is_dir():
        sys.exit(f"--input {source}: no such file or folder")
    suffixes = {s.lower() for s in config["image_suffixes"]}
    images = sorted(p for p in source.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes)
    if not images:
        sys.exit(f"--input {source}: no images ({', '.join(sorted(suffixes))})")
    names = {}
    for path in images:
        name = mask_name(path, config)
        if name in names:
            sys.exit(f"--input {source}: {names[name].name} and {path.name} would both write {name}")
        names[name] = path
    return [(path, Path(target) / mask_name(path, config)) for path in images]


def main(argv=None):
    """The command line; exits with a one-line message for a missing or empty --input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="an image, or a folder of images")
    parser.add_argument("--output", required=True,
                        help="the mask file for an image, or a folder for the masks (created)")
    parser.add_argument("--weights", default=str(HERE / "ckpt.pth"), help="checkpoint file")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args(argv)

    config = read_config()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    jobs = plan(args.input, args.output, config)
    model = load_model(args.weights, device, config)
    post = load_postprocess(config)
    channels = int(config.get("channels", 3))
    images = {path: read_image(path, channels) for path, _ in jobs}
    # images of one size together, in (size, file name) order, in batches: as cpx predicted
    # them, since another batch shape may pick another kernel and turn a tie the other way
    order = sorted(jobs, key=lambda job: (tuple(images[job[0]].shape[-2:]), job[0].name))
    batch = int(config.get("batch_size", 1))
    chunks = []
    for job in order:
        if chunks and len(chunks[-1]) < batch and images[chunks[-1][-1][0]].shape == images[job[0]].shape:
            chunks[-1].append(job)
        else:
            chunks.append([job])
    for chunk in chunks:
        masks = predict(model, torch.stack([images[path] for path, _ in chunk]), device, config)
        for (_, mask_path), mask in zip(chunk, masks):
            for step in post:
                mask = step(mask)
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            write_mask(mask_path, mask, config)
    print(f"wrote {len(jobs)} mask{'s' if len(jobs) != 1 else ''}"
          + (f" to {jobs[0][1]}" if len(jobs) == 1 else f" to {args.output}"))


if __name__ == "__main__":
    main()
