"""Property-based tests (hypothesis): the metric, --set parsing, and the checks that read
untrusted files, on inputs nobody would think to write by hand."""

import io
import zipfile

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cpx.cli import main
from cpx.data import check_dataset, write_dataset
from cpx.eval.metrics import fscore_per_image, fscore_reference
from cpx.kernel.config import parse_assignment
from cpx.kernel.errors import ConfigError

C = 6
FUNCTION = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def masks(shape=(5, 7)):
    return arrays(np.uint8, shape, elements=st.integers(0, C - 1))


@given(gt=masks())
def test_a_perfect_prediction_scores_one(gt):
    assert float(fscore_per_image(gt[None], gt[None], C)[0]) == pytest.approx(1.0, abs=1e-6)


@given(pred=masks(), gt=masks(), perm=st.permutations(range(C)))
def test_relabelling_classes_in_both_masks_keeps_the_score(pred, gt, perm):
    table = np.array(perm, dtype=np.uint8)
    before = float(fscore_per_image(pred[None], gt[None], C)[0])
    after = float(fscore_per_image(table[pred][None], table[gt][None], C)[0])
    assert after == pytest.approx(before, abs=1e-12)


@given(pred=masks(), gt=masks())
def test_the_score_is_within_0_and_1_and_equals_the_literal_formula(pred, gt):
    score = float(fscore_per_image(pred[None], gt[None], C)[0])
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(fscore_reference(pred, gt), abs=1e-9)


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
