"""Submission-format plugins (register_submission_formats): the contract over every registered
format, then each built-in's own rules: the organisers' run-length JSON decoded by hand and
every malformed field named, 0/255 and palette PNGs, lossy or oversized masks, and npz archives
that try to unpickle or inflate."""

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cpx_plugins.formats.npz as npz_format
from cpx.data.competition import Competition
from cpx.data.images import open_image, read_mask, write_image, write_stored_mask
from cpx.kernel.errors import ConfigError, DataError
from cpx.kernel.manager import create_plugin_host
from cpx.submit.checkreport import CheckReport
from cpx.submit.formats import create_format, duplicate_keys
from cpx.submit.zipentries import DirSource
from cpx.testing import check_submission_format

HOST = create_plugin_host(entry_points=False)
FORMATS = HOST.submission_formats.names()

SEVEN = tuple(f"c{i}" for i in range(7))
PALETTE = ((0, 0, 0), (0, 160, 0))
# options a format needs beyond its defaults, for two classes and for seven
NEEDED = {"rle-json": {"order": "column-major", "index_base": 1}}
NEEDED_SEVEN = {"rle-json": {"order": "row-major", "index_base": 0, "class": "c3"}}


def competition(classes=("background", "vegetation"), **fields) -> Competition:
    return Competition(name="test", classes=classes, **fields)


def make(comp: Competition):
    """The competition's format, built by its registered factory with the profile's options."""
    spec = comp.submission
    return HOST.submission_formats.get(spec.name).create(spec.options, comp, where="submission")


def read(fmt, root: Path):
    report = CheckReport(path=str(root), competition=fmt.competition.name)
    return fmt.read(DirSource(root), report), [str(p) for p in report.problems]


# --- the contract, over every registered format ------------------------------------------------


def test_the_four_builtins_are_registered():
    assert {"masks-png", "masks-tiff", "rle-json", "npz"} <= set(FORMATS)


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_keeps_the_contract_for_a_binary_competition(name):
    comp = competition(masks={"values": {0: 0, 255: 1}, "mode": "L"},
                       submission={"name": name, **NEEDED.get(name, {})})
    fmt = check_submission_format(HOST.submission_formats.get(name), comp)
    assert fmt.kept_classes() == (0, 1)


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_keeps_the_contract_for_seven_classes(name):
    comp = competition(SEVEN, palette=[(i * 30, 0, 0) for i in range(7)],
                       submission={"name": name, **NEEDED_SEVEN.get(name, {})})
    fmt = check_submission_format(HOST.submission_formats.get(name), comp)
    assert len(fmt.kept_classes()) == (2 if name == "rle-json" else 7)


@pytest.mark.parametrize("name", ["masks-tiff", "npz"])
def test_stored_values_over_255_round_trip_as_16_bit(name, tmp_path):
    comp = competition(("a", "b", "c"), masks={"values": {0: 0, 1000: 1, 2000: 2}},
                       submission={"name": name})
    fmt = check_submission_format(HOST.submission_formats.get(name), comp)
    with fmt.writer(tmp_path) as writer:
        writer.add("x.jpg", np.array([[0, 1, 2]], np.uint8))
    if name == "masks-tiff":
        stored = read_mask(tmp_path / "masks" / "x.tif")
    else:
        with np.load(tmp_path / "predictions.npz", allow_pickle=False) as npz:
            stored = npz["x"]
    assert stored.dtype == np.uint16 and stored.tolist() == [[0, 1000, 2000]]


def test_png_masks_over_255_need_16_bit_among_the_modes():
    spec = {"name": "masks-png"}
    values = {"values": {0: 0, 1000: 1}}
    with pytest.raises(ConfigError, match=r"^submission\.modes: .*I;16"):
        make(competition(masks=values, submission=spec))
    comp = competition(masks=values, submission={**spec, "modes": ["P", "I;16"]})
    check_submission_format(HOST.submission_formats.get("masks-png"), comp)


def test_keys_say_how_each_format_names_an_image():
    two = {name: make(competition(submission={"name": name, **NEEDED.get(name, {})})) for name in FORMATS}
    assert two["masks-png"].key("IMG_0001.JPG") == "IMG_0001" == two["npz"].key("IMG_0001.JPG")
    assert two["rle-json"].key("IMG_0001.JPG") == "IMG_0001.JPG"
    assert make(competition(submission={"name": "npz", "key": "name"})).key("IMG_0001.JPG") == "IMG_0001.JPG"
    assert duplicate_keys(two["masks-png"], ["a.jpg", "b.jpg", "a.png"]) == [("a.jpg", "a.png")]
    assert duplicate_keys(two["rle-json"], ["a.jpg", "b.jpg", "a.png"]) == []
    assert two["masks-png"].entries() == ("masks/",) and two["rle-json"].entries() == ("results.json",)
    assert two["npz"].entries() == ("predictions.npz",)
    assert make(competition(submission={"name": "masks-tiff", "folder": "out/masks/"})).entries() == ("out/",)


def test_each_format_describes_itself_in_one_line():
    comp = competition(("background", "vegetation"), submission={"name": "rle-json", "file": "results.json",
                                                                 "order": "column-major", "index_base": 1})
    assert make(comp).describe() == "results.json: run-length encoded masks of class vegetation, column-major, 1-based"
    png = make(competition(masks={"values": {0: 0, 255: 1}}, submission={"name": "masks-png"}))
    assert png.describe().startswith("masks/<stem>.png: ") and "0, 255" in png.describe()


# --- options -------------------------------------------------------------------------------------


def test_an_unknown_option_is_refused_naming_the_field():
    comp = competition(submission={"name": "rle-json", "ordr": "row-major", "index_base": 1})
    with pytest.raises(ConfigError) as built:
        create_format(comp, HOST)
    # order has no default, so the misspelt key also leaves it missing: one line each
    assert str(built.value).splitlines() == ["submission.order: Field required",
                                             "submission.ordr: unknown field; did you mean submission.order?"]
    # what Competition.bind checks when a profile is first used
    with pytest.raises(ConfigError) as bound:
        HOST.submission_formats.get("rle-json").parse_options(comp.submission.options, where="submission")
    assert str(bound.value) == str(built.value)


@pytest.mark.parametrize("spec,field", [
    ({"name": "rle-json", "index_base": 1}, "order"),  # no default: organisers differ
    ({"name": "rle-json", "order": "row-major", "index_base": 2}, "index_base"),
    ({"name": "masks-png", "folder": "../masks"}, "folder"),
    ({"name": "masks-png", "modes": ["RGB"]}, "modes.0"),
    ({"name": "masks-tiff", "suffix": ".TIF"}, "suffix"),
    ({"name": "npz", "file": "out/predictions.npz"}, "file"),
    ({"name": "npz", "key": "path"}, "key"),
])
def test_bad_option_values_are_refused_naming_the_field(spec, field):
    with pytest.raises(ConfigError, match=rf"^submission\.{field}: "):
        create_format(competition(submission=spec), HOST)


def test_png_refuses_a_profile_whose_mask_mode_it_would_not_accept():
    comp = competition(masks={"mode": "L"}, submission={"name": "masks-png", "modes": ["P"]})
    with pytest.raises(ConfigError, match=r"^submission\.modes: cpx writes masks in mode L \(the profile's "
                                          r"masks\.mode\)"):
        make(comp)


def test_rle_json_needs_a_class_beyond_two_classes():
    base = {"name": "rle-json", "order": "row-major", "index_base": 0}
    with pytest.raises(ConfigError, match=r"^submission\.class: required for a competition of 7 classes"):
        make(competition(SEVEN, submission=base))
    with pytest.raises(ConfigError, match=r"^submission\.class: 'c9' is not one of the classes"):
        make(competition(SEVEN, submission={**base, "class": "c9"}))
    with pytest.raises(ConfigError, match=r"^submission\.class: class 0 \(c0\) is the background"):
        make(competition(SEVEN, submission={**base, "class": 0}))
    assert make(competition(SEVEN, submission={**base, "class": 3})).class_id == 3
    assert make(competition(submission=base)).class_id == 1


# --- rle-json --------------------------------------------------------------------------------------


ISSUE_JSON = '{"a.JPG": {"counts": [1, 3, 10, 2], "height": 4, "width": 5}}'
# 1-based pixels 1-3 and 10-11, numbered down the columns of a 4 x 5 mask (index = c * 4 + r + 1)
BY_HAND_COLUMN_MAJOR = [[1, 0, 0, 0, 0],
                        [1, 0, 1, 0, 0],
                        [1, 0, 1, 0, 0],
                        [0, 0, 0, 0, 0]]
# the same pixels numbered along the rows (index = r * 5 + c + 1)
BY_HAND_ROW_MAJOR = [[1, 1, 1, 0, 0],
                     [0, 0, 0, 0, 1],
                     [1, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0]]


def rle(order="column-major", index_base=1, classes=("background", "vegetation"), **more):
    return make(competition(classes, submission={"name": "rle-json", "order": order, "index_base": index_base,
                                                 **more}))


def test_the_organisers_results_json_decodes_to_the_mask_worked_out_by_hand(tmp_path):
    (tmp_path / "results.json").write_text(ISSUE_JSON)
    masks, problems = read(rle("column-major", 1), tmp_path)
    assert problems == []
    assert list(masks) == ["a.JPG"] and masks["a.JPG"].dtype == np.uint8
    assert masks["a.JPG"].tolist() == BY_HAND_COLUMN_MAJOR


def test_row_major_numbers_the_same_runs_along_the_rows(tmp_path):
    (tmp_path / "results.json").write_text(ISSUE_JSON)
    masks, problems = read(rle("row-major", 1), tmp_path)
    assert problems == [] and masks["a.JPG"].tolist() == BY_HAND_ROW_MAJOR
    # read as 0-based, the same numbers name the next pixel of each
    masks, _ = read(rle("row-major", 0), tmp_path)
    assert masks["a.JPG"].tolist() == np.roll(np.array(BY_HAND_ROW_MAJOR).ravel(), 1).reshape(4, 5).tolist()


@pytest.mark.parametrize("order,index_base,counts", [
    ("row-major", 0, [7, 1, 18, 2]),  # (1, 2) is 1 * 5 + 2; (3, 3), (3, 4) are 18, 19
    ("row-major", 1, [8, 1, 19, 2]),
    ("column-major", 0, [9, 1, 15, 1, 19, 1]),  # (1, 2) is 2 * 4 + 1; (3, 3) is 15, (3, 4) 19
    ("column-major", 1, [10, 1, 16, 1, 20, 1]),
])
def test_the_writer_numbers_pixels_as_the_options_say(tmp_path, order, index_base, counts):
    mask = np.zeros((4, 5), np.uint8)
    mask[1, 2] = mask[3, 3] = mask[3, 4] = 1
    with rle(order, index_base).writer(tmp_path) as writer:
        writer.add("b.png", mask)
        writer.add("a.JPG", np.zeros((4, 5), np.uint8))
    text = (tmp_path / "results.json").read_text()
    assert " " not in text and "\n" not in text  # compact
    assert json.loads(text) == {"a.JPG": {"counts": [], "height": 4, "width": 5},
                                "b.png": {"counts": counts, "height": 4, "width": 5}}


def test_rle_json_keeps_only_its_class_of_a_many_class_mask(tmp_path):
    fmt = rle("row-major", 0, SEVEN, **{"class": "c3"})
    with fmt.writer(tmp_path) as writer:
        writer.add("x.jpg", np.array([[0, 3, 5], [3, 1, 3]], np.uint8))
    masks, problems = read(fmt, tmp_path)
    assert problems == [] and masks["x.jpg"].tolist() == [[0, 3, 0], [3, 0, 3]]
    assert json.loads((tmp_path / "results.json").read_text())["x.jpg"]["counts"] == [1, 1, 3, 1, 5, 1]


GOOD = '"b.JPG": {"counts": [3, 2], "height": 2, "width": 2}'
ENTRY = '"counts": [1, 3, 10, 2], "height": 4, "width": 5'


@pytest.mark.parametrize("text,message", [
    ('{"a.JPG": ', "results.json: not JSON ("),
    ('{"a.JPG": {"counts": [NaN], "height": 1, "width": 1}}', "results.json: not JSON (NaN is not standard JSON)"),
    ('[{"counts": [1, 3], "height": 4, "width": 5}]', "results.json: the top level is a list; expected an object"),
    ('{"a.JPG": [1, 3, 10, 2], GOOD}', "results.json: a.JPG: a list; expected an object with counts, height and width"),
    ('{"a.JPG": {"height": 4, "width": 5}, GOOD}', "results.json: a.JPG.counts: missing"),
    ('{"a.JPG": {"counts": [1, 3], "width": 5}, GOOD}', "results.json: a.JPG.height: missing"),
    ('{"a.JPG": {ENTRY, "score": 0.9}, GOOD}', "results.json: a.JPG.score: unknown field"),
    ('{"a.JPG": {ENTRY, "width": 5}, GOOD}', "results.json: a.JPG.width: appears more than once"),
    ('{"a.JPG": {"counts": "1 3 10 2", "height": 4, "width": 5}, GOOD}', "results.json: a.JPG.counts: a string;"),
    ('{"a.JPG": {"counts": [1, 3, 10.5, 2], "height": 4, "width": 5}, GOOD}',
     "results.json: a.JPG.counts[2]: 10.5 is not an integer"),
    ('{"a.JPG": {"counts": [true, 3], "height": 4, "width": 5}, GOOD}',
     "results.json: a.JPG.counts[0]: True is not an integer"),
    ('{"a.JPG": {"counts": [1, 3, -10, 2], "height": 4, "width": 5}, GOOD}',
     "results.json: a.JPG.counts[2]: -10 is negative"),
    ('{"a.JPG": {"counts": [1, 3, 10], "height": 4, "width": 5}, GOOD}',
     "results.json: a.JPG.counts: odd length 3; expected start, length pairs"),
    ('{"a.JPG": {"counts": [1, 3, 10, 0], "height": 4, "width": 5}, GOOD}',
     "results.json: a.JPG.counts[3]: a run of length 0"),
    ('{"a.JPG": {"counts": [10, 2, 1, 3], "height": 4, "width": 5}, GOOD}',
     "results.json: a.JPG.counts[2]: the run at 1 starts before the previous one ends (12)"),
    ('{"a.JPG": {"counts": [1, 3, 3, 2], "height": 4, "width": 5}, GOOD}',
     "results.json: a.JPG.counts[2]: the run at 3 starts before the previous one ends (4)"),
    ('{"a.JPG": {"counts": [0, 3], "height": 4, "width": 5}, GOOD}',
     "results.json: a.JPG.counts[0]: 0 is before the first pixel, 1 (index_base)"),
    ('{"a.JPG": {"counts": [1, 3, 19, 3], "height": 4, "width": 5}, GOOD}',
     "results.json: a.JPG.counts[2]: the run 19+3 ends past the last pixel, 20 (column-major, 1-based)"),
    ('{"a.JPG": {"counts": [1, 3], "height": 0, "width": 5}, GOOD}',
     "results.json: a.JPG.height: 0 is not a positive integer"),
    ('{"a.JPG": {"counts": [1, 3], "height": 4, "width": "5"}, GOOD}',
     "results.json: a.JPG.width: '5' is not a positive integer"),
    ('{"a.JPG": {"counts": [1, 3], "height": 4.0, "width": 5}, GOOD}',
     "results.json: a.JPG.height: 4.0 is not a positive integer"),
    ('{"a.JPG": {"counts": [1, 3], "height": 100000, "width": 100000}, GOOD}',
     "results.json: a.JPG: 100000x100000 pixels; a mask is at most"),
    ('{"a.JPG": {ENTRY}, "a.JPG": {ENTRY}, GOOD}', "results.json: a.JPG: appears more than once"),
])
def test_each_malformed_entry_is_one_problem_naming_file_and_field(tmp_path, text, message):
    (tmp_path / "results.json").write_text(text.replace("GOOD", GOOD).replace("ENTRY", ENTRY))
    masks, problems = read(rle("column-major", 1), tmp_path)
    assert len(problems) == 1 and problems[0].startswith(message), problems
    assert "a.JPG" not in masks
    if "GOOD" in text:  # the entries beside the bad one still count
        assert masks["b.JPG"].tolist() == [[0, 1], [0, 1]]


def test_a_missing_results_file_is_named(tmp_path):
    masks, problems = read(rle(), tmp_path)
    assert masks == {} and problems == ["results.json: missing: the submission has no such file"]


# --- masks-png and masks-tiff ------------------------------------------------------------------


def test_zero_255_masks_are_written_and_read_back_through_masks_values(tmp_path):
    comp = competition(masks={"values": {0: 0, 255: 1}, "mode": "L"}, submission={"name": "masks-png"})
    mask = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    with make(comp).writer(tmp_path) as writer:
        writer.add("IMG_1.JPG", mask)
    assert read_mask(tmp_path / "masks" / "IMG_1.png").tolist() == [[0, 255, 255], [255, 0, 0]]
    masks, problems = read(make(comp), tmp_path)
    assert problems == [] and masks["IMG_1"].tolist() == mask.tolist()
    # a value the map does not have is a problem, not a guess
    write_stored_mask(tmp_path / "masks" / "IMG_2.png", np.array([[0, 128]], np.uint8), "L")
    masks, problems = read(make(comp), tmp_path)
    assert "IMG_2" not in masks and problems == [
        "masks/IMG_2.png: mask value 128 not in the competition's masks.values (0, 255)"]


def test_a_palette_png_keeps_the_competition_palette(tmp_path):
    comp = competition(palette=PALETTE, masks={"mode": "P"}, submission={"name": "masks-png"})
    with make(comp).writer(tmp_path) as writer:
        writer.add("a.jpg", np.array([[0, 1]], np.uint8))
    with open_image(tmp_path / "masks" / "a.png", "mask", decode=True) as img:
        assert img.mode == "P" and img.format == "PNG"
        assert img.getpalette()[:6] == [0, 0, 0, 0, 160, 0]
        assert np.asarray(img).tolist() == [[0, 1]]


def test_a_jpeg_renamed_png_in_the_masks_folder_is_a_problem(tmp_path):
    (tmp_path / "masks").mkdir()
    write_image(tmp_path / "photo.jpg", np.zeros((8, 8), np.uint8))
    (tmp_path / "photo.jpg").rename(tmp_path / "masks" / "a.png")
    masks, problems = read(make(competition(submission={"name": "masks-png"})), tmp_path)
    assert masks == {} and len(problems) == 1
    assert problems[0].startswith("masks/a.png: mask is stored as JPEG") and "lossy" in problems[0]


def test_a_tiff_is_no_png_and_a_png_no_tiff(tmp_path):
    write_stored_mask(tmp_path / "masks" / "a.tif", np.zeros((2, 2), np.uint8))
    (tmp_path / "masks" / "a.tif").rename(tmp_path / "masks" / "a.png")
    write_stored_mask(tmp_path / "masks" / "b.png", np.zeros((2, 2), np.uint8), "L")
    (tmp_path / "masks" / "b.png").rename(tmp_path / "masks" / "b.tif")
    _, png_problems = read(make(competition(submission={"name": "masks-png"})), tmp_path)
    _, tiff_problems = read(make(competition(submission={"name": "masks-tiff"})), tmp_path)
    assert "masks/a.png: mask is stored as TIFF; expected PNG" in png_problems
    assert "masks/b.tif: mask is stored as PNG; expected TIFF" in tiff_problems


def test_a_mask_folder_reports_every_name_the_scorer_would_not_find(tmp_path):
    masks_dir = tmp_path / "masks"
    for rel in ("a.png", "A.png", "b.PNG", "c.jpg", "sub/d.png", "notes.txt"):
        write_stored_mask(masks_dir / rel, np.zeros((2, 3), np.uint8), "L")
    masks, problems = read(make(competition(submission={"name": "masks-png"})), tmp_path)
    assert list(masks) == ["A"]  # names are read in sorted order: A.png before a.png
    assert problems == [
        "masks/a.png: same name as masks/A.png but for case; the two collide when unzipped on Windows or macOS",
        "masks/b.PNG: not a .png mask (the scorer looks for .png; case matters on its file system)",
        "masks/c.jpg: not a .png mask",
        "masks/notes.txt: not a .png mask",
        "masks/sub/d.png: masks sit directly in masks/, not in a subfolder",
    ]


def test_a_mask_that_does_not_decode_is_one_problem_naming_it(tmp_path):
    masks_dir = tmp_path / "masks"
    noise = np.random.default_rng(0).integers(0, 2, (64, 64)).astype(np.uint8)
    write_stored_mask(masks_dir / "cut.png", noise, "L")
    data = (masks_dir / "cut.png").read_bytes()
    (masks_dir / "cut.png").write_bytes(data[:len(data) // 2])
    write_stored_mask(masks_dir / "deep.png", np.array([[0, 1000]], np.uint16))  # 16-bit, mode I;16
    write_image(masks_dir / "rgb.png", np.zeros((2, 2, 3), np.uint8))
    write_stored_mask(masks_dir / "ok.png", np.array([[1, 0]], np.uint8), "P")
    masks, problems = read(make(competition(submission={"name": "masks-png"})), tmp_path)
    assert list(masks) == ["ok"] and masks["ok"].tolist() == [[1, 0]]
    assert len(problems) == 3
    assert problems[0].startswith("masks/cut.png: cannot read mask (")
    assert problems[1] == "masks/deep.png: mask mode I;16 is not supported; expected P or L"
    assert problems[2] == "masks/rgb.png: mask has 3 channels (RGB); expected one channel of class ids (mode P or L)"


def test_an_empty_submission_has_no_masks_folder(tmp_path):
    masks, problems = read(make(competition(submission={"name": "masks-tiff", "suffix": ".tiff"})), tmp_path)
    assert masks == {} and problems == ["masks/: no masks/ folder of .tiff masks at the top of the zip"]


@pytest.mark.parametrize("name,suffix", [("masks-png", ".png"), ("masks-tiff", ".tif")])
def test_a_mask_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch, name, suffix):
    import cpx_plugins.formats._folder as folder

    write_stored_mask(tmp_path / "masks" / f"big{suffix}", np.zeros((20, 30), np.uint8), "L")
    monkeypatch.setattr(folder, "MAX_MASK_PIXELS", 500)
    masks, problems = read(make(competition(submission={"name": name})), tmp_path)
    assert masks == {} and problems == [f"masks/big{suffix}: mask is too large to open safely (30x20, over the "
                                        "limit of 500 pixels); it may be a decompression bomb"]


def test_writers_refuse_what_they_cannot_store(tmp_path):
    png = make(competition(("a", "b", "c"), masks={"values": {0: 0, 255: 1}}, submission={"name": "masks-png"}))
    writer = png.writer(tmp_path)
    writer.add("x.jpg", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match=r"^y\.jpg: the competition's mask encoding has no stored value for class id 2"):
        writer.add("y.jpg", np.full((2, 2), 2, np.uint8))
    with pytest.raises(DataError, match=r"^x\.png: its prediction would go to masks/x\.png, as that of x\.jpg"):
        writer.add("x.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match=r"^X\.jpg: its prediction would go to masks/X\.png"):  # case clash
        writer.add("X.jpg", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match=r"^z\.jpg: a prediction must be a non-empty H x W uint8 array"):
        writer.add("z.jpg", np.zeros((0, 2), np.uint8))
    writer.add("y.jpg", np.ones((2, 2), np.uint8))  # a refused mask leaves its name free
    assert writer.close() == ["masks/x.png", "masks/y.png"]
    with pytest.raises(DataError, match=r"^x\.jpg: class id 2 is outside 0\.\.1"):
        rle().writer(tmp_path).add("x.jpg", np.full((2, 2), 2, np.uint8))


# --- npz -----------------------------------------------------------------------------------------


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # pickles object arrays, as a careless submitter's would
    return buffer.getvalue()


def read_npz(tmp_path, data: bytes, comp=None):
    (tmp_path / "predictions.npz").write_bytes(data)
    return read(make(comp or competition(submission={"name": "npz"})), tmp_path)


class _Exploit:
    """Unpickling it would create a file: proof that nothing was unpickled."""

    target = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_npz_refuses_object_arrays_and_pickles_without_unpickling(tmp_path):
    flag = tmp_path / "unpickled"
    _Exploit.target = str(flag)
    objects = np.empty((2, 2), dtype=object)
    objects[0, 0] = _Exploit()
    masks, problems = read_npz(tmp_path, npz_bytes(a=objects, b=np.ones((2, 2), np.uint8)))
    assert problems == ["predictions.npz: a.npy: an array of Python objects (pickled data), which cpx never loads; "
                        "save integer class ids"]
    assert list(masks) == ["b"] and not flag.exists()
    masks, problems = read_npz(tmp_path, pickle.dumps({"a": _Exploit()}))
    assert masks == {} and problems == ["predictions.npz: not an npz archive; expected an npz (np.savez: a zip of "
                                        "one .npy array per image)"]
    assert not flag.exists()


@pytest.mark.parametrize("array,message", [
    (np.zeros((2, 3, 3), np.uint8), "a.npy: shape (2, 3, 3); expected one non-empty H x W mask"),
    (np.zeros(6, np.uint8), "a.npy: shape (6,); expected one non-empty H x W mask"),
    (np.zeros((2, 3), np.float32), "a.npy: float32 values; expected integer class ids (uint8)"),
    (np.full((2, 3), 7, np.int64), "a.npy: class id 7 outside 0..1"),
])
def test_npz_refuses_arrays_that_are_no_mask(tmp_path, array, message):
    masks, problems = read_npz(tmp_path, npz_bytes(a=array))
    assert masks == {} and problems == [f"predictions.npz: {message}"]


def test_npz_takes_integer_arrays_of_class_ids(tmp_path):
    masks, problems = read_npz(tmp_path, npz_bytes(a=np.array([[0, 1]], np.int64), b=np.array([[True, False]])))
    assert problems == [] and masks["a"].dtype == np.uint8
    assert masks["a"].tolist() == [[0, 1]] and masks["b"].tolist() == [[1, 0]]


def _spy_opens(monkeypatch) -> list[str]:
    """Names of the zip members opened from now on."""
    opened = []
    real_open = zipfile.ZipFile.open

    def open_(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", open_)
    return opened


def test_an_npz_member_too_large_for_any_mask_is_never_opened(tmp_path, monkeypatch):
    data = npz_bytes(bomb=np.zeros((100, 100), np.uint8), ok=np.zeros((2, 2), np.uint8))
    monkeypatch.setattr(npz_format, "MAX_MEMBER_BYTES", 5000)  # a 10,000-pixel mask stands in for a huge one
    opened = _spy_opens(monkeypatch)
    masks, problems = read_npz(tmp_path, data)
    assert problems == ["predictions.npz: bomb.npy: unpacks to 10,128 bytes; a mask array is at most 5,000 bytes "
                        "(not loaded)"]
    assert list(masks) == ["ok"] and "bomb.npy" not in opened and "ok.npy" in opened


def test_an_npz_member_whose_header_claims_too_many_pixels_is_not_loaded(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("bomb.npy", "w") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (100000, 100000)})
            fh.write(bytes(1000))
        with zf.open("short.npy", "w") as fh:  # declares 4 x 5 but holds 3 bytes
            np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (4, 5)})
            fh.write(bytes(3))
    masks, problems = read_npz(tmp_path, buffer.getvalue())
    assert masks == {}
    assert problems[0].startswith("predictions.npz: bomb.npy: 100000x100000 pixels; a mask is at most ")
    assert problems[0].endswith("(not loaded)")
    assert problems[1] == "predictions.npz: short.npy: holds 131 bytes, but its header declares 148 (uint8 4x5)"


def test_an_npz_that_is_no_zip_or_repeats_a_member_is_named(tmp_path):
    single = io.BytesIO()
    np.save(single, np.zeros((2, 2), np.uint8))
    _, problems = read_npz(tmp_path, single.getvalue())
    assert problems == ["predictions.npz: a single .npy array; expected an npz (np.savez: a zip of one .npy array "
                        "per image)"]
    buffer = io.BytesIO()
    with pytest.warns(UserWarning, match="Duplicate name"):
        with zipfile.ZipFile(buffer, "w") as zf:
            for _ in range(2):
                with zf.open("a.npy", "w") as fh:
                    np.lib.format.write_array(fh, np.zeros((1, 1), np.uint8))
    masks, problems = read_npz(tmp_path, buffer.getvalue())
    assert masks == {} and problems == ["predictions.npz: a.npy: appears 2 times"]
