#!/usr/bin/env python3
"""Predict segmentation masks: one image to one mask, or a folder of images to a folder of masks.

    python run.py --input img.jpg --output mask.png [--weights ckpt.pth] [--device cpu]
    python run.py --input IMAGES --output MASKS [--weights ckpt.pth] [--device cpu]

A mask is a single-channel palette PNG of class ids, the size of its image; from a folder,
each is named after its image (``<stem>.png``). Needs only torch, numpy and Pillow
(requirements.txt); the network is defined in the module named in model.json, next to this
file, and model.json holds every setting of the prediction.

The prediction is the one that made the packaged masks, step by step: the uint8 RGB image is
resized to the model's square input size (bilinear, antialiased, on uint8), scaled to [0, 1]
and fed channels-last; with test-time augmentation each view (mirrored, or resized by another
scale) gives logits, a mirrored view's are mirrored back with the left/right classes swapped,
and the views' logits are summed; logits (never class ids) are resized back to the image's
size (bilinear, align_corners=False) and the class is the first maximum. Views of one size of
a model with ``forward_coarse`` are summed at the model's coarse resolution and resized once.
One image per forward pass.

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
# keys under which checkpoints keep their weights, the expected one first
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model")


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
        for key in (config.get("weights_key", "state_dict"),) + WEIGHT_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    model.load_state_dict(state)
    return model.to(memory_format=torch.channels_last).to(device).eval()


def read_image(path):
    """The image as a 1 x 3 x H x W uint8 tensor."""
    with Image.open(path) as img:
        arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


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


def view_logits(model, x, flip, side, coarse):
    """Float32 logits of one view of the uint8 batch ``x`` at ``side`` x ``side`` (still
    mirrored for a mirrored view)."""
    if tuple(x.shape[-2:]) != (side, side):
        if x.device.type == "cpu":
            # resized as uint8, these are exactly the pixels Pillow gave the model in training
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        else:  # GPUs have no uint8 bilinear kernel
            x = F.interpolate(x.float(), size=(side, side), mode="bilinear", align_corners=False,
                              antialias=True).round_().clamp_(0, 255)
    if flip:
        x = x.flip(-1)
    x = x.float().div(255).contiguous(memory_format=torch.channels_last)
    logits = model.forward_coarse(x) if coarse else model(x)
    return logits.float()


@torch.inference_mode()
def predict(model, image, device, config):
    """Class ids (H x W uint8 numpy array) for a 1 x 3 x H x W uint8 image, at its own size."""
    size = int(config["image_size"])
    tta = config.get("tta") or []
    scales = [float(s) for s in config.get("scales") or [1.0]] if "scale" in tta else [1.0]
    flips = [False, True] if "flip" in tta else [False]
    views = [(flip, scale) for scale in scales for flip in flips]
    swap = config.get("flip_permutation") or list(range(int(config["num_classes"])))
    out_hw = tuple(image.shape[-2:])
    x = image.to(device)
    coarse = (len(views) > 1 and all(scale == 1.0 for _, scale in views)
              and callable(getattr(model, "forward_coarse", None)))
    summed = None
    for flip, scale in views:
        side = max(1, int(round(size * scale)))
        logits = view_logits(model, x, flip, side, coarse)
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
    return class_ids(summed)[0].cpu().numpy()


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


def write_mask(path, mask, palette):
    """Save H x W uint8 class ids as a palette PNG (value = class id)."""
    # built from raw bytes so every value stays its own palette index (= class id)
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
    img.putpalette(palette)
    img.save(path, format="PNG")


def plan(source, target, config):
    """(image, mask path) pairs: one for a file, one per image for a folder."""
    source, suffix = Path(source), config["mask_suffix"]
    if source.is_file():
        target_path = Path(target)
        if target_path.is_dir() or str(target).endswith(("/", "\\")):
            target_path = target_path / (source.stem + suffix)
        return [(source, target_path)]
    if not source.is_dir():
        sys.exit(f"--input {source}: no such file or folder")
    suffixes = {s.lower() for s in config["image_suffixes"]}
    images = sorted(p for p in source.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes)
    if not images:
        sys.exit(f"--input {source}: no images ({', '.join(sorted(suffixes))})")
    stems = {}
    for path in images:
        if path.stem in stems:
            sys.exit(f"--input {source}: {stems[path.stem].name} and {path.name} would both write "
                     f"{path.stem}{suffix}")
        stems[path.stem] = path
    return [(path, Path(target) / (path.stem + suffix)) for path in images]


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
    for image_path, mask_path in jobs:
        mask = predict(model, read_image(image_path), device, config)
        for step in post:
            mask = step(mask)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        write_mask(mask_path, mask, config["palette"])
    print(f"wrote {len(jobs)} mask{'s' if len(jobs) != 1 else ''}"
          + (f" to {jobs[0][1]}" if len(jobs) == 1 else f" to {args.output}"))


if __name__ == "__main__":
    main()
