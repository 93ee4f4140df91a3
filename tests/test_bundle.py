"""Starting from the organisers' Codabench bundle and scoring with their own program (cpx.bundle):
a v2 and a v1.5 bundle built here, each with its own small scoring program, through init ->
train one epoch -> validate --official -> package; hostile bundles and hostile programs, one
line each; the bundle's limits in the budget and its phase in uploads."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cpx.bundle.reader import read_bundle_yaml
from cpx.cli import main
from cpx.kernel.errors import BundleError
from cpx.runs.ledger import Ledger

SMALL_UNET = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--quiet",
              "--set", "model.options.base_channels=4", "--set", "model.options.depth=2"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def enter(ws: Path, monkeypatch) -> None:
    """Work in ``ws`` from now on, with a fresh plugin host that sees its competitions/ (as a new
    cpx process would; the test's own host was built before the workspace existed)."""
    from cpx.kernel.manager import create_plugin_host, set_host

    monkeypatch.setenv("CPX_WORKSPACE", str(ws))
    monkeypatch.chdir(ws)
    set_host(create_plugin_host(entry_points=False))  # the cpx_host fixture restores its predecessor


def lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def write_data(root: Path, classes: int, stored: dict | None = None, seed: int = 0) -> Path:
    """img/{train,val,test}/*.jpg and ann/{train,val}/*.png: rectangles of each class on noise,
    widths varying; masks stored as ``stored`` maps class ids (else as ids)."""
    rng = np.random.default_rng(seed)
    for part, count in (("train", 14), ("val", 5), ("test", 3)):
        for i in range(count):
            h, w = 40, int(rng.integers(44, 70))
            mask = np.zeros((h, w), np.uint8)
            for c in range(1, classes):
                y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
                mask[y:y + 12, x:x + int(rng.integers(8, 12))] = c
            image = np.full((h, w, 3), 120, np.uint8) + rng.integers(0, 30, (h, w, 3), dtype=np.uint8)
            for c in range(1, classes):
                image[mask == c] = (30 * c, 140, 200 - 40 * c)
            (root / "img" / part).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "img" / part / f"IMG_{part}{i}.jpg")
            if part != "test":
                (root / "ann" / part).mkdir(parents=True, exist_ok=True)
                out = mask if stored is None else np.vectorize(stored.get)(mask).astype(np.uint8)
                Image.fromarray(out, mode="L").save(root / "ann" / part / f"IMG_{part}{i}.png")
    return root


# ------------------------------------------------------------------ the organisers' programs

# v2: pooled mIoU over the classes present in either mask, into scores.json
MIOU_PROGRAM = '''
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
inp, out = Path(sys.argv[1]), Path(sys.argv[2])
inter, union = {}, {}
for ref in sorted((inp / "ref" / "masks").glob("*.png")):
    g = np.asarray(Image.open(ref))
    p = np.asarray(Image.open(inp / "res" / "masks" / ref.name))
    for c in np.union1d(np.unique(g), np.unique(p)).tolist():
        inter[c] = inter.get(c, 0) + int(((g == c) & (p == c)).sum())
        union[c] = union.get(c, 0) + int(((g == c) | (p == c)).sum())
miou = float(np.mean([inter[c] / union[c] for c in union if union[c]]))
out.mkdir(parents=True, exist_ok=True)
(out / "scores.json").write_text(json.dumps({"miou": miou, "duration": 1.5}))
print("mIoU", miou)
'''

# v1.5: the IoU of class 1 over results.json (run lengths, column-major, 1-based) into scores.txt
IOU_PROGRAM = '''
import json, os, sys
import numpy as np
inp, out = sys.argv[1], sys.argv[2]

def decode(e):
    flat = np.zeros(e["height"] * e["width"], np.uint8)
    c = e["counts"]
    for s, n in zip(c[0::2], c[1::2]):
        flat[s - 1:s - 1 + n] = 1
    return flat.reshape(e["width"], e["height"]).T

ref = json.load(open(os.path.join(inp, "ref", "results.json")))
res = json.load(open(os.path.join(inp, "res", "results.json")))
tp = fp = fn = 0
for key in ref:
    g, p = decode(ref[key]), decode(res[key])
    tp += int(((g == 1) & (p == 1)).sum())
    fp += int(((g == 0) & (p == 1)).sum())
    fn += int(((g == 1) & (p == 0)).sum())
if not os.path.isdir(out):
    os.makedirs(out)
with open(os.path.join(out, "scores.txt"), "w") as f:
    f.write("iou: %.10f\\nDuration: 2.0\\n" % (tp / float(tp + fp + fn)))
'''

V2_YAML = """\
version: 2
title: Tiny Parts Challenge
image: logo.png
terms: terms.md
pages: [{title: Overview, file: overview.md}]
docker_image: codalab/codalab-legacy:py37
tasks:
  - {index: 0, name: Development task, scoring_program: scoring_program/, reference_data: reference_data/}
phases:
  - index: 0
    name: Development
    start: 2020-01-01 00:00:00
    end: 2099-01-01 00:00:00
    max_submissions: 20
    max_submissions_per_day: 3
    execution_time_limit: 120
    accepts_only_result_submissions: true
    sparkle: yes
    tasks: [0]
  - {index: 1, name: Final, start: 2099-01-02, tasks: [0]}
leaderboards:
  - title: Results
    key: main
    columns:
      - {title: mIoU, key: miou, index: 0, sorting: desc}
      - {title: Duration, key: duration, index: 1, sorting: asc}
"""

V15_YAML = """\
title: Vegetation from the air
description: one class against the background
image: logo.jpg
has_registration: False
end_date: null
html:
  overview: overview.html
  terms: terms.html
phases:
  1:
    phasenumber: 1
    label: Development Phase
    start_date: 2020-01-01
    is_scoring_only: True
    execution_time_limit: 60
    max_submissions_per_day: 4
    scoring_program: scoring_program.zip
    reference_data: reference_data.zip
  2:
    phasenumber: 2
    label: Final Phase
    start_date: 2099-06-01
    is_scoring_only: True
    max_submissions: 3
    scoring_program: scoring_program.zip
    reference_data: reference_data.zip
leaderboard:
  leaderboards:
    Results: &RESULTS
      label: RESULTS
      rank: 1
  columns:
    iou:
      leaderboard: *RESULTS
      label: IoU
      numeric_format: 4
      rank: 1
    Duration:
      leaderboard: *RESULTS
      label: Duration
      rank: 2
"""


def v2_bundle(path: Path, program: str = MIOU_PROGRAM,
              command: str = "python3 /app/program/score.py /app/input /app/output") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("competition.yaml", V2_YAML)
        zf.writestr("terms.md", "be kind")
        zf.writestr("overview.md", "segment the parts")
        zf.writestr("logo.png", b"")
        zf.writestr("scoring_program/metadata.yaml", f"command: {command}\ndescription: mIoU\n")
        zf.writestr("scoring_program/score.py", program)
        zf.writestr("reference_data/README", "hidden")
        zf.writestr("__MACOSX/._competition.yaml", "junk an archiver added")
    return path


def v15_bundle(path: Path) -> Path:
    """A CodaLab v1.5 zip whose scoring program is itself a zip (metadata without extension)."""
    inner = path.with_name("scoring_program.zip")
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("metadata", "command: python $program/score.py $input $output\n")
        zf.writestr("score.py", IOU_PROGRAM)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("competition.yaml", V15_YAML)
        for page in ("overview.html", "terms.html"):
            zf.writestr(page, "<p>page</p>")
        zf.write(inner, "scoring_program.zip")
        zf.writestr("reference_data.zip", b"")
    inner.unlink()
    return path


# ------------------------------------------------------------------ reading competition.yaml


def test_v2_and_v15_yaml_read_as_codabench_reads_them():
    v2 = read_bundle_yaml(V2_YAML)
    assert v2.version == "2" and v2.title == "Tiny Parts Challenge"
    dev, final = v2.phases
    assert (dev.name, dev.max_submissions, dev.max_submissions_per_day, dev.execution_time_limit) == \
        ("Development", 20, 3, 120)
    assert dev.accepts_only_result_submissions and dev.scoring_program == "scoring_program/"
    assert dev.start == dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    assert (final.max_submissions, final.max_submissions_per_day) == (100, 5)  # Codabench's defaults
    assert set(final.defaults) == {"max_submissions", "max_submissions_per_day"}
    assert (v2.ranked.key, v2.ranked.sorting) == ("miou", "desc")
    assert [c.key for c in v2.columns] == ["miou", "duration"]
    assert v2.warnings == ["phases[0].sparkle: not a key cpx knows in a Codabench bundle; ignored"]

    v15 = read_bundle_yaml(V15_YAML)
    assert v15.version == "1.5"
    dev, final = v15.phases
    # a v1.5 phase ends the day before the next starts; the last never ends (end_date: null)
    assert dev.end == dt.datetime(2099, 5, 31, tzinfo=dt.timezone.utc) and final.end is None
    assert (dev.max_submissions, dev.max_submissions_per_day, dev.execution_time_limit) == (100, 4, 60)
    assert (final.max_submissions, final.max_submissions_per_day) == (3, 5)
    assert dev.accepts_only_result_submissions and dev.scoring_program == "scoring_program.zip"
    assert (v15.ranked.key, v15.ranked.title) == ("iou", "IoU") and v15.warnings == []


@pytest.mark.parametrize("text, message", [
    ("version: 3\ntitle: x\n", "version: '3' is neither 2 nor 1.5"),
    ("version: 2\ntitle: x\nphases: [{name: a, tasks: [0]}]\n", "tasks: none listed"),
    ("version: 2\ntasks: [{index: 0, name: t}]\nphases: [{name: a, tasks: [0]}]\n", "task 't' has no scoring_program"),
    ("version: 2\ntasks: [{index: 0, scoring_program: p/}]\nphases: [{name: a, tasks: [1]}]\n", "no task of index 1"),
    ("title: x\nphases: {1: {phasenumber: 1, label: Dev}}\n", "phase 'Dev' has no scoring_program"),
    ("version: 2\ntasks: [{index: 0, scoring_program: 0c7d9b1e-3f1a-4b6e-9a3c-2d5e8f7a6b4c}]\n"
     "phases: [{name: a, tasks: [0]}]\n", "stored on a Codabench server"),
])
def test_a_malformed_competition_yaml_is_one_line(text, message):
    with pytest.raises(BundleError, match=message) as info:
        read_bundle_yaml(text)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ v2: init -> train -> validate --official


def test_a_v2_bundle_from_init_to_an_official_validation_and_a_package(capsys, tmp_path, monkeypatch):
    data = write_data(tmp_path / "data", classes=3)
    bundle = v2_bundle(tmp_path / "tiny-parts.zip")
    ws = tmp_path / "ws"
    code, out, err = cli(capsys, "init", ws, "--bundle", bundle, "--from-data", data)
    assert code == 0, err
    assert "ranked leaderboard column: miou (larger is better)" in out
    assert "phases[0].sparkle" in err  # unknown keys warn
    profile = ws / "competitions" / "tiny-parts-challenge.yaml"
    text = profile.read_text()
    for field in ("classes", "channels", "size", "layout", "metric", "submission"):
        assert f"# {field}: " in text and text.split(f"# {field}: ", 1)[1].split("\n", 1)[0].endswith("confirm")
    assert (ws / "competitions" / "tiny-parts-challenge" / "scoring_program" / "score.py").read_text() == MIOU_PROGRAM
    assert "competition: tiny-parts-challenge" in (ws / "cpx.yaml").read_text()
    assert not (ws / "competitions" / "tiny-parts-challenge" / "__MACOSX").exists()

    enter(ws, monkeypatch)
    code, out, _ = cli(capsys, "competitions", "tiny-parts-challenge", "--json")
    shown = json.loads(out)
    assert shown["classes"] == ["class0", "class1", "class2"] and shown["metric"]["name"] == "miou"
    assert shown["leaderboard"] == {"column": "miou", "sorting": "desc", "title": "mIoU"}
    assert [p["name"] for p in shown["phases"]] == ["Development", "Final"]
    assert shown["phases"][0]["execution_time_limit"] == 120 and shown["phases"][0]["max_submissions_per_day"] == 3

    # no --data: the folder init was given, from cpx.yaml
    code, out, err = cli(capsys, "train", "unet", "--name", "r", *SMALL_UNET)
    assert code == 0, err
    (config,) = (ws / "experiments" / "runs").glob("*/config.yaml")
    assert Path(yaml.safe_load(config.read_text())["data"]["path"]) == Path(data).resolve()
    code, out, err = cli(capsys, "validate", "r", "--official", "--json")
    assert code == 0, err
    result = json.loads(out)
    official = result["official"]
    assert official["column"] == "miou" and official["scores"]["duration"] == 1.5
    assert abs(official["value"] - result["score"]) < 1e-9 and official["agrees"] and official["warning"] is None
    assert official["phase"] == "Development"
    kept = Path(official["folder"])
    assert kept.parent.parent.name == result["run_id"] and (kept / "output" / "scores.json").is_file()
    assert sorted(p.name for p in (kept / "input" / "res" / "masks").iterdir()) == \
        sorted(f"IMG_val{i}.png" for i in range(5))  # the organisers' validation folder
    assert "mIoU" in (kept / "stdout.txt").read_text()
    with Ledger(ws / "experiments" / "ledger.db") as ledger:
        rows = ledger.list_validations(result["run_id"])
    (row,) = [v for v in rows if v["official_score"] is not None]
    assert row["official_score"] == official["value"] and row["official_column"] == "miou"
    assert row["official_dir"] == str(kept) and row["id"] == result["validation_id"]

    code, out, err = cli(capsys, "validate", "r", "--official")
    assert code == 0 and "miou (the ranked column, scores.json)" in out and "warning" not in err

    code, out, _ = cli(capsys, "leaderboard", "--by", "official", "--json")
    board = json.loads(out)
    assert code == 0 and board["sort"] == "official" and board["official_column"] == "miou"
    assert board["rows"][0]["official_score"] == official["value"]

    code, out, err = cli(capsys, "package", "r", "--name", "s1", "--json")
    assert code == 0, err
    packaged = json.loads(out)
    assert packaged["official"]["agrees"] and packaged["official"]["column"] == "miou"
    assert abs(packaged["official"]["value"] - official["value"]) < 1e-9
    # the budget is the bundle's current phase: 20 in the phase, 3 a day
    budget = packaged["budget"]
    assert (budget["phase"], budget["limit"], budget["per_day"], budget["left"]) == ("Development", 20, 3, 3)
    code, out, err = cli(capsys, "package", "r", "--name", "s2", "--no-official", "--json")
    assert code == 0 and json.loads(out)["official"] is None


# ------------------------------------------------------------------ v1.5: the done-when of issue 21


def test_a_v15_bundle_never_seen_scores_as_its_program_run_by_hand(capsys, tmp_path, monkeypatch):
    data = write_data(tmp_path / "veg", classes=2, stored={0: 0, 1: 255}, seed=1)
    bundle = v15_bundle(tmp_path / "vegetation.zip")
    ws = tmp_path / "ws"
    code, out, err = cli(capsys, "init", ws, "--bundle", bundle, "--from-data", data)
    assert code == 0, err
    text = (ws / "competitions" / "vegetation-from-the-air.yaml").read_text()
    assert "submission: {name: rle-json, file: results.json, order: column-major, index_base: 1}" in text
    assert "metric: {name: class-iou, class: foreground}" in text and "masks:\n  values: {0: 0, 255: 1}" in text
    program = ws / "competitions" / "vegetation-from-the-air" / "scoring_program"
    assert (program / "metadata").is_file() and (program / "score.py").read_text() == IOU_PROGRAM

    enter(ws, monkeypatch)
    code, out, err = cli(capsys, "train", "unet", "--data", data, "--name", "v", *SMALL_UNET)
    assert code == 0, err
    code, out, err = cli(capsys, "validate", "v", "--official", "--json")
    assert code == 0, err
    result = json.loads(out)
    official = result["official"]
    assert official["scores_file"] == "scores.txt" and official["phase"] == "Development Phase"
    assert abs(official["value"] - result["score"]) < 1e-4, official

    # the program run by hand, in a fresh interpreter, on the same files gives the same number
    kept = Path(official["folder"])
    by_hand = tmp_path / "by-hand"
    subprocess.run([sys.executable, str(program / "score.py"), str(kept / "input"), str(by_hand)], check=True,
                   timeout=60)
    printed = dict(line.split(": ") for line in (by_hand / "scores.txt").read_text().splitlines())
    assert float(printed["iou"]) == official["value"]

    # cpx score PRED GT --official on masks predicted for the validation images
    pred = tmp_path / "pred"
    assert cli(capsys, "predict", "v", "--input", data / "img" / "val", "--output", pred)[0] == 0
    code, out, err = cli(capsys, "score", pred, data / "ann" / "val", "--official", "--json")
    assert code == 0, err
    scored = json.loads(out)
    assert abs(scored["official"]["value"] - scored["score"]) < 1e-4
    assert abs(scored["official"]["value"] - official["value"]) < 1e-9  # the same masks as validate's
    assert Path(scored["official"]["folder"]).parent == ws / "experiments" / "official"

    code, out, err = cli(capsys, "package", "v", "--name", "s1", "--json")
    assert code == 0, err
    packaged = json.loads(out)
    assert abs(packaged["official"]["value"] - official["value"]) < 1e-9
    assert (packaged["budget"]["limit"], packaged["budget"]["per_day"]) == (100, 4)
    with zipfile.ZipFile(packaged["zip_path"]) as zf:
        assert "results.json" in zf.namelist()


# ------------------------------------------------------------------ hostile bundles


def _zip(path: Path, entries: dict, links: tuple = ()) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


GOOD = {"competition.yaml": V2_YAML, "scoring_program/metadata.yaml": "command: python3 $program/score.py\n",
        "scoring_program/score.py": MIOU_PROGRAM}


@pytest.mark.parametrize("kind, message", [
    ("path escape", "path climbs out of the zip folder"),
    ("absolute path", "absolute path"),
    ("link", "symbolic link"),
    ("zip bomb", "the mark of a zip bomb"),
    ("no competition.yaml", "no competition.yaml at its top"),
    ("no scoring program", "task 'Development task' has no scoring_program"),
    ("program not in the bundle", "its scoring program scoring_program/ is not in the bundle"),
    ("no metadata", "has no metadata.yaml (or metadata)"),
    ("escape inside the program zip", "scoring_program.zip: not a safe bundle"),
    ("not a zip", "not a readable zip"),
    ("a folder with a link", "symbolic link"),
])
def test_a_hostile_bundle_is_one_line_and_writes_nothing(kind, message, capsys, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "bundle.zip"
    if kind == "path escape":
        _zip(path, {**GOOD, "../evil.py": "print('escaped')"})
    elif kind == "absolute path":
        _zip(path, {**GOOD, "/tmp/evil.py": "x"})
    elif kind == "link":
        _zip(path, GOOD, links=(("scoring_program/passwd", "/etc/passwd"),))
    elif kind == "zip bomb":
        _zip(path, {**GOOD, "reference_data/huge.bin": bytes(24 * 2**20)})
    elif kind == "no competition.yaml":
        _zip(path, {k: v for k, v in GOOD.items() if k != "competition.yaml"})
    elif kind == "no scoring program":
        _zip(path, {**GOOD, "competition.yaml": V2_YAML.replace(" scoring_program: scoring_program/,", "")})
    elif kind == "program not in the bundle":
        _zip(path, {"competition.yaml": V2_YAML})
    elif kind == "no metadata":
        _zip(path, {"competition.yaml": V2_YAML, "scoring_program/score.py": MIOU_PROGRAM})
    elif kind == "escape inside the program zip":
        inner = _zip(outside / "inner.zip", {"metadata.yaml": "command: x\n", "../../evil.py": "x"})
        _zip(path, {"competition.yaml": V2_YAML.replace("scoring_program/,", "scoring_program.zip,"),
                    "scoring_program.zip": inner.read_bytes()})
        inner.unlink()
    elif kind == "not a zip":
        path.write_bytes(b"PK this is not a zip")
    elif kind == "a folder with a link":
        path = outside / "bundle"
        for name, text in GOOD.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_text(text)
        os.symlink("/etc/passwd", path / "scoring_program" / "passwd")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    ws = tmp_path / "ws"
    code, out, err = cli(capsys, "init", ws, "--bundle", path)
    assert code == 2 and len(lines(err)) == 1 and message in err, err
    assert not ws.exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not list(Path(tmp_path).rglob("evil.py")) and not Path("/tmp/evil.py").exists()


def test_init_refuses_a_folder_that_is_not_empty_and_keeps_an_empty_one_empty(capsys, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "init", taken, "--bundle", v2_bundle(tmp_path / "b.zip"))
    assert code == 2 and "not an empty folder" in err and os.listdir(taken) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "init", empty, "--bundle", _zip(tmp_path / "bad.zip", {"competition.yaml": V2_YAML}))
    assert code == 2 and empty.is_dir() and os.listdir(empty) == []


def test_a_bundle_folder_and_a_bundle_inside_one_folder_of_a_zip_are_read(capsys, tmp_path):
    folder = tmp_path / "bundle"
    for name, text in GOOD.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    code, out, err = cli(capsys, "init", tmp_path / "a", "--bundle", folder, "--json")
    assert code == 0, err
    assert json.loads(out)["programs"] == ["competitions/tiny-parts-challenge/scoring_program"]
    wrapped = _zip(tmp_path / "wrapped.zip", {f"tiny/{k}": v for k, v in GOOD.items()})
    code, out, err = cli(capsys, "init", tmp_path / "b", "--bundle", wrapped, "--json")
    assert code == 0 and "everything sits inside tiny/" in " ".join(json.loads(out)["warnings"])


# ------------------------------------------------------------------ hostile programs


PROFILE = """\
name: parts
classes: [a, b, c]
layout: {image_suffixes: [.jpg]}
metric: {name: miou}
phases:
  - {name: Development, start: 2020-01-01 00:00:00, execution_time_limit: LIMIT, scoring_program: parts/program}
leaderboard: {column: miou}
"""


def _masks(folder: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 3, (20, 24), dtype=np.uint8), mode="L").save(folder / f"m{i}.png")
    return folder


def _program_workspace(ws: Path, program: str, limit: float = 30) -> None:
    (ws / "competitions" / "parts" / "program").mkdir(parents=True)
    (ws / "competitions" / "parts.yaml").write_text(PROFILE.replace("LIMIT", str(limit)))
    (ws / "competitions" / "parts" / "program" / "metadata.yaml").write_text(
        "command: python3 $program/score.py $input $output\n")
    (ws / "competitions" / "parts" / "program" / "score.py").write_text(program)


# a program that hangs, with a child of its own that must go with it
HANG = ("import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n")


@pytest.mark.parametrize("program, limit, message", [
    ("import sys\nprint('reference missing', file=sys.stderr)\nsys.exit(1)\n", 30,
     "the scoring program exited with code 1 (reference missing)"),
    (HANG, 1, "ran past the phase's time limit of 1 s and was stopped"),
    ("print('%$#@! garbage !@#$%' * 100)\n", 30, "wrote neither scores.json nor scores.txt in output/"),
    ("import sys, os\nos.makedirs(sys.argv[2], exist_ok=True)\nopen(os.path.join(sys.argv[2], 'scores.json'), 'w')"
     ".write('{not json')\n", 30, "output/scores.json is not a JSON object of scores ('{not json')"),
    ("import sys, os, json\nos.makedirs(sys.argv[2], exist_ok=True)\njson.dump({'accuracy': 0.5}, "
     "open(os.path.join(sys.argv[2], 'scores.json'), 'w'))\n", 30,
     "output/scores.json has no score 'miou', the ranked leaderboard column (it has accuracy)"),
], ids=["exits 1", "hangs past the limit", "prints garbage", "garbage scores", "no ranked column"])
def test_a_failing_program_is_one_line_and_its_output_is_kept(program, limit, message, capsys, cpx_workspace,
                                                                tmp_path):
    import time

    _program_workspace(cpx_workspace.root, program, limit)
    pred, gt = _masks(tmp_path / "pred", 0), _masks(tmp_path / "gt", 1)
    start = time.monotonic()
    code, out, err = cli(capsys, "score", pred, gt, "--official", "--competition", "parts")
    assert code == 2 and len(lines(err)) == 1 and message in err, err
    assert time.monotonic() - start < 20
    (kept,) = (cpx_workspace.experiments_dir / "official").iterdir()
    assert f"its output is in {kept}" in err and (kept / "stdout.txt").is_file()


def test_a_program_is_run_only_when_asked(capsys, cpx_workspace, tmp_path):
    marker = tmp_path / "ran"
    _program_workspace(cpx_workspace.root, f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n")
    pred, gt = _masks(tmp_path / "pred", 0), _masks(tmp_path / "gt", 1)
    code, out, err = cli(capsys, "score", pred, gt, "--competition", "parts")
    assert code == 0 and not marker.exists()
    code, _, err = cli(capsys, "score", pred, gt, "--competition", "parts", "--official")
    assert code == 2 and marker.exists() and "exited with code 3" in err


def test_official_python_runs_the_program_in_the_interpreter_given(capsys, cpx_workspace, tmp_path):
    _program_workspace(cpx_workspace.root, "import json, os, sys\nos.makedirs(sys.argv[2], exist_ok=True)\n"
                                           "json.dump({'miou': 0.25, 'exe': len(sys.executable)}, "
                                           "open(os.path.join(sys.argv[2], 'scores.json'), 'w'))\n")
    venv_python = tmp_path / "venv" / "bin" / "python3"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    pred, gt = _masks(tmp_path / "pred", 0), _masks(tmp_path / "gt", 1)
    code, out, err = cli(capsys, "score", pred, gt, "--competition", "parts", "--official",
                         "--official-python", venv_python, "--json")
    assert code == 0, err
    official = json.loads(out)["official"]
    assert official["scores"]["exe"] == len(str(venv_python)) and official["value"] == 0.25
    assert not official["agrees"] and "check the profile's metric" in official["warning"]
    code, out, err = cli(capsys, "score", pred, gt, "--competition", "parts", "--official")
    assert code == 0 and "more than 0.0001" in err


# ------------------------------------------------------------------ the bundle's limits and phase


BUDGET_PROFILE = """\
name: parts
classes: [a, b]
phases:
  - {name: Development, start: 2020-01-01 00:00:00, end: 2021-01-01 00:00:00, max_submissions: 50}
  - {name: Final, start: 2021-01-02 00:00:00, max_submissions: 3, max_submissions_per_day: 1}
"""


def test_the_budget_reads_the_bundle_phase_limits_per_phase_and_per_day(cpx_workspace):
    from cpx.data.competition import Competition
    from cpx.kernel.yamlfile import parse_yaml
    from cpx.submit.submissions import default_phase, phase_budget

    comp = Competition.model_validate(parse_yaml(BUDGET_PROFILE, "parts.yaml"))
    assert default_phase(comp) == "Final"
    with Ledger(cpx_workspace.ledger_path) as ledger:
        run = ledger.add_run(name="r", competition="parts", status="completed")
        budget = phase_budget(ledger, comp, "Final")
        assert (budget.limit, budget.per_day, budget.left) == (3, 1, 1)
        ledger.add_submission("s1", run_id=run["id"])
        ledger.update_submission("s1", uploaded=True, uploaded_at=dt.datetime.now(dt.timezone.utc), phase="Final")
        budget = phase_budget(ledger, comp, "Final")
        assert (budget.used, budget.used_today, budget.left) == (1, 1, 0)
        assert budget.warning() == "no submissions left in phase 'Final' today: 1 of 1 used"
        ledger.update_submission("s1", uploaded_at="2021-02-01T10:00:00+00:00")  # an earlier day
        budget = phase_budget(ledger, comp, "Final")
        assert (budget.used, budget.used_today, budget.left) == (1, 0, 1)
        assert "phase 'Final': 1 of 3 used, 2 left" in budget.describe()
        assert phase_budget(ledger, comp, "Development").limit == 50


def test_upload_goes_to_the_phase_the_bundle_names(capsys, cpx_workspace, tmp_path, logged_in):
    server = logged_in
    (cpx_workspace.root / "competitions").mkdir()
    (cpx_workspace.root / "competitions" / "parts.yaml").write_text(BUDGET_PROFILE)
    (cpx_workspace.root / "cpx.yaml").write_text("competition: parts\n")
    with Ledger(cpx_workspace.ledger_path) as ledger:
        run = ledger.add_run(name="r", competition="parts", status="completed", best_val_score=0.5)
        path = tmp_path / "s.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("masks/a.png", b"x")
        ledger.add_submission("s", run_id=run["id"], zip_path=str(path), val_score=0.5)
        # the server calls Development current; the bundle's dates say Final: cpx follows the bundle
        code, out, err = cli(capsys, "submit", "s", "--upload", "--competition", "42", "--yes")
        assert code == 0, err
        row = ledger.get_submission("s")
        assert (row["codabench_phase"], row["phase"]) == (8, "Final")
        assert "phase 'Final' today: 0 of 1 used" in out
        code, out, _ = cli(capsys, "submissions", "--json")
        assert json.loads(out)["phase"] == "Final" and json.loads(out)["used"] == 1
        server.phases[1]["name"] = "Finale"
        ledger.add_submission("t", run_id=run["id"], zip_path=str(path), val_score=0.5)
        code, _, err = cli(capsys, "submit", "t", "--upload", "--competition", "42", "--yes")
        assert code == 2 and len(lines(err)) == 1 and "has no phase named 'Final'" in err
