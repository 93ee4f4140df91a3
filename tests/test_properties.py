"""Property-based tests (hypothesis): the metrics (the F-score plugin against the organisers'
literal formula, every registered metric's range), --set parsing, and the checks that read
untrusted files, on inputs nobody would think to write by hand."""

import io
import math
import zipfile

import numpy as np
import pytest
import yaml
from conftest import fscore_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cpx.cli import main
from cpx.data import check_dataset, write_dataset
from cpx.data.competition import Competition
from cpx.data.masks import IGNORE
from cpx.eval.metrics import ScoreAccumulator, create_metric
from cpx.kernel.config import parse_assignment
from cpx.kernel.errors import ConfigError
from cpx.kernel.manager import create_plugin_host

C = 6
FUNCTION = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
HOST = create_plugin_host(entry_points=False)
CLASSES = tuple(f"c{i}" for i in range(C))
# options a built-in metric cannot do without
METRIC_OPTIONS = {"class-iou": {"class": "c1"}}


def metric(name: str, scale: float = 1.0):
    comp = Competition(name="t", classes=CLASSES, metric={"name": name, "scale": scale, **METRIC_OPTIONS.get(name, {})})
    return create_metric(comp, HOST)


FSCORE = metric("fscore")
# every registered metric, on its own scale and in percent
METRICS = {(name, scale): metric(name, scale) for name in HOST.metrics.names() for scale in (1.0, 100.0)}


def masks(shape=(5, 7), ignore=False):
    values = st.sampled_from([*range(C), IGNORE]) if ignore else st.integers(0, C - 1)
    return arrays(np.uint8, shape, elements=values)


def image_value(m, pred, gt) -> float:
    """One image's value of metric ``m`` (on its scale)."""
    return float(ScoreAccumulator(m, C).update(pred[None], gt[None])[0])


@given(gt=masks())
def test_a_perfect_prediction_scores_one(gt):
    assert image_value(FSCORE, gt, gt) == pytest.approx(1.0, abs=1e-6)


@given(pred=masks(), gt=masks(), perm=st.permutations(range(C)))
def test_relabelling_classes_in_both_masks_keeps_the_score(pred, gt, perm):
    table = np.array(perm, dtype=np.uint8)
    before = image_value(FSCORE, pred, gt)
    after = image_value(FSCORE, table[pred], table[gt])
    assert after == pytest.approx(before, abs=1e-12)


@given(pred=masks(), gt=masks())
def test_the_score_is_within_0_and_1_and_equals_the_literal_formula(pred, gt):
    score = image_value(FSCORE, pred, gt)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(fscore_reference(pred, gt), abs=1e-9)


@given(key=st.sampled_from(sorted(METRICS)), pred=masks(), gt=masks(ignore=True))
def test_any_metric_is_in_range_and_one_image_scores_its_own_value(key, pred, gt):
    m = METRICS[key]
    acc = ScoreAccumulator(m, C)
    value = float(acc.update(pred[None], gt[None])[0])
    score = acc.compute().score
    assert math.isnan(value) or 0.0 <= value <= m.scale
    # over one image, a pooled formula on the summed counts and a mean of images' values both
    # give that image's own value
    assert (math.isnan(value) and math.isnan(score)) or score == pytest.approx(value, abs=1e-9 * m.scale)
    perfect = image_value(m, np.where(gt == IGNORE, 0, gt).astype(np.uint8), gt)
    assert not m.better(value, perfect)  # nothing beats the ground truth itself


KEYS = st.lists(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=4).map(".".join)
VALUES = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.none(),
                   st.floats(allow_nan=False, allow_infinity=False, width=32),
                   st.lists(st.integers(0, 100), max_size=4), st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True))


@given(key=KEYS, value=VALUES)
def test_set_assignments_round_trip(key, value):
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("..."):  # yaml's end-of-document marker after a bare scalar
        text = text[:-3].strip()
    assert parse_assignment(f"{key}={text}") == (key, value)


@given(text=st.text(max_size=40))
def test_set_parsing_never_fails_other_than_cleanly(text):
    try:
        key, _ = parse_assignment(text)
    except ConfigError as exc:
        assert "--set" in str(exc)
    else:
        assert key and "=" in text


@settings(max_examples=25, deadline=None, suppress_health_check=FUNCTION)
@given(blobs=st.lists(st.binary(max_size=300), min_size=2, max_size=2))
def test_data_check_on_random_bytes_reports_problems_and_never_raises(tmp_path_factory, cpx_host, blobs):
    comp = cpx_host.competition("celebamask-mini")
    root = tmp_path_factory.mktemp("random")
    write_dataset(root, comp, comp.synthesize(3, 16, 0), test_count=1)
    (root / "train" / "images" / "synth_00000.jpg").write_bytes(blobs[0])
    (root / "train" / "masks" / "synth_00001.png").write_bytes(blobs[1])
    report = check_dataset(root, comp)
    assert {p.path for p in report.problems} >= {"train/images/synth_00000.jpg", "train/masks/synth_00001.png"}
    assert all("\n" not in str(p) for p in report.problems)


ZIP_NAMES = st.sampled_from(["masks/a.png", "masks/b.png", "solution/run.py", "solution/ckpt.pth",
                             "solution/requirements.txt", "manifest.json", "../evil.png", "/abs.png",
                             "__MACOSX/x", "top/masks/a.png", "masks/", "masks/c.jpg"])


@pytest.mark.filterwarnings("ignore:Duplicate name")  # duplicate members are one of the inputs
@settings(max_examples=25, deadline=None, suppress_health_check=FUNCTION)
@given(members=st.lists(st.tuples(ZIP_NAMES, st.binary(max_size=200)), max_size=6), raw=st.booleans())
def test_package_check_on_random_zips_answers_in_lines_never_a_traceback(tmp_path_factory, capsys, members, raw):
    folder = tmp_path_factory.mktemp("zips")
    path = folder / "submission.zip"
    if raw:  # not even a zip
        path.write_bytes(b"".join(data for _, data in members))
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in members:
                z.writestr(name, data)
        path.write_bytes(buf.getvalue())
    code = main(["package", "--check", str(path), "--competition", "celebamask-mini"])
    out = capsys.readouterr()
    assert code in (1, 2), out
    assert "Traceback" not in out.err + out.out
