"""A Codabench scoring program written by ``cpx bundle export``: it scores the submission in
``input/res`` against the references in ``input/ref`` and writes ``scores.json`` to the output
folder, as the Codabench worker runs it::

    python3 score.py INPUT OUTPUT        (INPUT holds ref/ and res/)

What it scores is in ``score_config.json`` beside it: the submission format (``masks-png``,
``masks-tiff``, ``rle-json`` or ``npz`` with their options), the stored mask values and ignore
index, the metric (``fscore``, ``miou``, ``class-iou``, ``dice``, ``pooled-dice``,
``pixel-accuracy``, ``mean-class-accuracy``) with the class ids it needs, its scale and the
leaderboard column it writes. The formulas are those of cpx's metrics (per-image confusion
counts, pooled or averaged over images), so its score equals ``cpx validate``'s on the same masks.

It needs only numpy, Pillow and the standard library: it runs in Codabench's default image.
A problem with the submission (a missing prediction, a wrong size, an unreadable file) is one
line on stderr and exit code 1, which Codabench shows as a failed submission.
"""

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE = 255  # class id of ignored pixels inside this program
FSCORE_EPS = 1e-7


class Refused(Exception):
    """A submission this program cannot score."""


# --------------------------------------------------------------------------------------------
# Reading a submission (or the references, written the same way)


def class_ids(stored, config, what):
    """Class ids (uint8, IGNORE at the ignore index) of stored mask values."""
    stored = np.asarray(stored).astype(np.int64)
    values = config.get("values")
    ignore = config.get("ignore_index")
    k = config["num_classes"]
    if values is None and k == 2 and ignore != 255 and stored.size and set(np.unique(stored).tolist()) <= {0, 255} \
            and stored.max() == 255:
        return (stored == 255).astype(np.uint8)
    table = np.full(max(65536, int(stored.max()) + 1 if stored.size else 1), -1, dtype=np.int64)
    if values is None:
        table[:k] = np.arange(k)
    else:
        for value, cid in values.items():
            table[int(value)] = int(cid)
    if ignore is not None:
        table[int(ignore)] = IGNORE
    if stored.size and stored.min() < 0:
        raise Refused(f"{what}: negative mask value {int(stored.min())}")
    out = table[stored]
    if (out < 0).any():
        bad = sorted(set(np.unique(stored[out < 0]).tolist()))[:5]
        raise Refused(f"{what}: mask values {bad} are not classes of this competition")
    return out.astype(np.uint8)


def read_folder(root, fmt, config):
    folder = Path(root) / fmt["folder"]
    if not folder.is_dir():
        raise Refused(f"no {fmt['folder']}/ folder of masks")
    out = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(fmt["suffix"]):
            with Image.open(path) as img:
                img.load()
                if len(img.getbands()) != 1:
                    raise Refused(f"{fmt['folder']}/{path.name}: a mask has one band, this one {len(img.getbands())}")
                out[path.name[:-len(fmt["suffix"])]] = class_ids(np.asarray(img), config, path.name)
    return out


def read_rle(root, fmt, config):
    path = Path(root) / fmt["file"]
    if not path.is_file():
        raise Refused(f"no {fmt['file']}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise Refused(f"{fmt['file']}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Refused(f"{fmt['file']}: not an object keyed by image file name")
    out = {}
    for key, entry in data.items():
        try:
            h, w, counts = int(entry["height"]), int(entry["width"]), [int(c) for c in entry["counts"]]
        except (KeyError, TypeError, ValueError):
            raise Refused(f"{fmt['file']}: {key}: needs counts, height and width") from None
        flat = np.zeros(h * w, dtype=np.uint8)
        for start, length in zip(counts[0::2], counts[1::2]):
            a = start - fmt["index_base"]
            if a < 0 or length < 0 or a + length > h * w:
                raise Refused(f"{fmt['file']}: {key}: the run {start}+{length} is outside the mask")
            flat[a:a + length] = fmt["class"]
        out[key] = flat.reshape(w, h).T.copy() if fmt["order"] == "column-major" else flat.reshape(h, w)
    return out


def read_npz(root, fmt, config):
    path = Path(root) / fmt["file"]
    if not path.is_file():
        raise Refused(f"no {fmt['file']}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: class_ids(archive[key], config, f"{fmt['file']}: {key}") for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise Refused(f"{fmt['file']}: not an npz cpx can read ({exc})") from None


READERS = {"masks-png": read_folder, "masks-tiff": read_folder, "rle-json": read_rle, "npz": read_npz}


def read_submission(root, config):
    fmt = config["format"]
    return READERS[fmt["name"]](root, fmt, config)


# --------------------------------------------------------------------------------------------
# Counting and the metrics (cpx.eval.metrics and cpx_plugins.metrics, in numpy)


def counts(pred, truth, k):
    """(tp, fp, fn) per class of one image, ignored ground-truth pixels left out."""
    keep = truth != IGNORE
    g, p = truth[keep].astype(np.int64), pred[keep].astype(np.int64)
    if p.size and p.max() >= k:
        raise Refused(f"class id {int(p.max())} outside 0..{k - 1}")
    conf = np.bincount(g * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(conf).astype(np.float64)
    return tp, conf.sum(0) - tp, conf.sum(1) - tp


def ratio(num, den, empty=np.nan):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def nanmean(values):
    values = np.asarray(values, np.float64)
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else float("nan")


def image_value(name, spec, tp, fp, fn):
    if name == "fscore":
        present = (tp + fn) > 0
        p, r = tp / (tp + fp + FSCORE_EPS), tp / (tp + fn + FSCORE_EPS)
        f = 2 * p * r / (p + r + FSCORE_EPS)
        return float((f * present).sum() / present.sum()) if present.any() else float("nan")
    if name == "dice":
        idx = spec["classes"]
        return float(ratio(2 * tp[idx], 2 * tp[idx] + fp[idx] + fn[idx], empty=1.0).mean())
    raise KeyError(name)


def pooled_value(name, spec, tp, fp, fn):
    if name == "miou":
        return nanmean(ratio(tp, tp + fp + fn))
    if name == "class-iou":
        k = spec["class"]
        return float(ratio(tp[k], tp[k] + fp[k] + fn[k], empty=1.0))
    if name == "pooled-dice":
        idx = spec["classes"]
        return float(ratio(2 * tp[idx], 2 * tp[idx] + fp[idx] + fn[idx], empty=1.0).mean())
    if name == "pixel-accuracy":
        return float(ratio(tp.sum(), (tp + fn).sum()))
    if name == "mean-class-accuracy":
        return nanmean(ratio(tp, tp + fn))
    raise KeyError(name)


PER_IMAGE = ("fscore", "dice")


def score(ref, res, config):
    """The metric over every reference image, on its scale."""
    spec = config["metric"]
    k = config["num_classes"]
    images, tp_sum, fp_sum, fn_sum = [], np.zeros(k), np.zeros(k), np.zeros(k)
    for key in sorted(ref):
        if key not in res:
            raise Refused(f"no prediction for {key}")
        truth, pred = ref[key], res[key]
        if truth.shape != pred.shape:
            raise Refused(f"{key}: the prediction is {pred.shape[1]}x{pred.shape[0]}, the reference "
                          f"{truth.shape[1]}x{truth.shape[0]}")
        tp, fp, fn = counts(pred, truth, k)
        tp_sum, fp_sum, fn_sum = tp_sum + tp, fp_sum + fp, fn_sum + fn
        if spec["name"] in PER_IMAGE:
            images.append(image_value(spec["name"], spec, tp, fp, fn))
    if not ref:
        raise Refused("no reference masks")
    value = nanmean(images) if spec["name"] in PER_IMAGE else pooled_value(spec["name"], spec, tp_sum, fp_sum,
                                                                             fn_sum)
    return value * float(config.get("scale", 1.0))


def main(argv):
    if len(argv) == 3:
        ref_dir, res_dir, out_dir = Path(argv[1]) / "ref", Path(argv[1]) / "res", Path(argv[2])
    elif len(argv) == 4:
        ref_dir, res_dir, out_dir = Path(argv[1]), Path(argv[2]), Path(argv[3])
    else:
        print("usage: score.py INPUT OUTPUT  (INPUT holds ref/ and res/)", file=sys.stderr)
        return 2
    config = json.loads((Path(__file__).resolve().parent / "score_config.json").read_text(encoding="utf-8"))
    try:
        value = score(read_submission(ref_dir, config), read_submission(res_dir, config), config)
    except Refused as exc:
        print(f"submission refused: {exc}", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scores.json").write_text(json.dumps({config["column"]: value}))
    print(f"{config['column']}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
