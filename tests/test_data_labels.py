"""Label checks: masks with left/right classes on the wrong side (cpx.data.labels)."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from cpx.cli import main
from cpx.data import write_dataset
from cpx.data.labels import apply_label_policy, check_labels, class_centroids, swap_pairs
from cpx.kernel.config import build_config
from cpx.kernel.errors import ConfigError, DataError
from cpx.train.prepare import prepare_data

EYES, BROWS, EARS = (4, 5), (6, 7), (8, 9)


def _faces(comp, n=40, size=64, seed=0):
    return list(comp.synthesize(n, size, seed))


def test_centroids_are_mean_columns_and_tiny_classes_are_ignored():
    mask = np.zeros((10, 10), np.uint8)
    mask[:, 2:4] = 1  # columns 2 and 3
    mask[0, 9] = 2  # one pixel: below MIN_PIXELS
    x = class_centroids(mask, 4)
    assert x[1] == pytest.approx(2.5) and np.isnan(x[2]) and np.isnan(x[3])
    with pytest.raises(DataError, match="H x W"):
        class_centroids(np.zeros((2, 3, 4)), 4)


def test_correct_synthetic_masks_raise_no_suspects(comp):
    masks = [m for _, m in _faces(comp)]
    check = check_labels(masks, [str(i) for i in range(len(masks))], comp)
    assert check.side == "right" and check.declared == "right"
    assert check.agree > 50 and check.disagree == 0 and check.suspects == []


def test_swapped_masks_are_found_with_their_pairs_and_fixed(comp):
    masks = [m for _, m in _faces(comp)]
    names = [f"m{i:02d}" for i in range(len(masks))]
    whole = [i for i, m in enumerate(masks) if all((m == c).any() for c in (*EYES, *BROWS))][:3]
    ears = [i for i, m in enumerate(masks) if i not in whole and ((m == 8).any() or (m == 9).any())][:1]
    assert len(whole) == 3 and ears
    for i in whole:
        masks[i] = swap_pairs(masks[i], comp.flip_pairs)
    masks[ears[0]] = swap_pairs(masks[ears[0]], [EARS])
    check = check_labels(masks, names, comp)
    found = {s.name: s for s in check.suspects}
    assert set(found) == {names[i] for i in whole + ears}
    for i in whole:
        assert {EYES, BROWS} <= set(found[names[i]].pairs) and found[names[i]].confidence >= 0.5
    assert found[names[ears[0]]].pairs == (EARS,)
    assert "l_ear/r_ear" in found[names[ears[0]]].describe(comp.classes)
    # swapping back clears them
    fixed = [swap_pairs(m, found[n].pairs) if n in found else m for n, m in zip(names, masks)]
    assert check_labels(fixed, names, comp).suspects == []


def test_side_comes_from_the_majority_when_the_profile_declares_none(comp):
    masks = [swap_pairs(m, comp.flip_pairs) for _, m in _faces(comp, n=12)]
    names = [str(i) for i in range(len(masks))]
    undeclared = comp.model_copy(update={"pair_side": None})
    check = check_labels(masks, names, undeclared)
    assert check.side == "left" and check.declared is None and check.suspects == []
    declared = check_labels(masks, names, comp)  # the profile says right: every mask is reversed
    assert len(declared.suspects) == len(masks) and "most masks here put it on the left" in declared.warnings[0]


def test_policy_excludes_or_fixes_training_masks(comp):
    masks = torch.from_numpy(np.stack([m for _, m in _faces(comp, n=10, size=128)]))
    names = [f"m{i}" for i in range(10)]
    i = next(i for i, m in enumerate(masks) if all(int((m == c).sum()) >= 20 for c in (*EYES, *BROWS)))
    bad = masks.clone()
    bad[i] = swap_pairs(bad[i], [EYES, BROWS])
    keep, out, check, chosen = apply_label_policy(names, bad, comp, exclude=True, fix=False, min_confidence=0.5)
    assert keep == [k for k in range(10) if k != i] and [s.name for s in chosen] == [names[i]]
    keep, out, _, _ = apply_label_policy(names, bad, comp, exclude=False, fix=True, min_confidence=0.5)
    assert keep == list(range(10)) and torch.equal(out, masks) and not torch.equal(bad, masks)
    with pytest.raises(DataError, match="choose one"):
        apply_label_policy(names, bad, comp, exclude=True, fix=True, min_confidence=0.5)


def _data_with_swaps(comp, root, swapped=(1, 4, 7), n=30):
    samples = _faces(comp, n=n + 2, size=32)
    samples = [(img, swap_pairs(m, comp.flip_pairs) if i in swapped else m) for i, (img, m) in enumerate(samples)]
    write_dataset(root, comp, iter(samples), test_count=2)
    return root


def test_data_check_labels_lists_suspects(comp, tmp_path, capsys):
    root = _data_with_swaps(comp, tmp_path / "data")
    assert main(["data", "check", str(root), "--labels", "--json"]) == 0
    labels = json.loads(capsys.readouterr().out)["labels"]
    assert len(labels["suspects"]) == 3 and labels["side"] == "right"
    assert all(s["confidence"] >= 0.5 and [4, 5] in s["pairs"] for s in labels["suspects"])
    assert main(["data", "check", str(root), "--labels"]) == 0
    out = capsys.readouterr().out
    assert "3 suspect mask(s) of 30" in out and "l_eye/r_eye" in out and "exclude_suspect" in out


def test_training_data_without_or_with_fixed_suspects(comp, cpx_workspace, cpx_host, tiny_model, tmp_path):
    root = _data_with_swaps(comp, tmp_path / "data")
    base = tiny_overrides(**{"data.path": str(root), "data.image_size": 32})
    plain, _ = build_config("msf-lmsa", base, cpx_workspace.experiments_dir, cpx_host)
    excluded, _ = build_config("msf-lmsa", {**base, "data.exclude_suspect": True}, cpx_workspace.experiments_dir,
                               cpx_host)
    fixed, _ = build_config("msf-lmsa", {**base, "data.fix_suspect": True}, cpx_workspace.experiments_dir, cpx_host)
    a, b, c = (prepare_data(cfg, comp, cpx_workspace) for cfg in (plain, excluded, fixed))
    suspects = set(b.label_policy["names"])
    assert a.label_policy is None and suspects and suspects <= set(a.train_names)
    assert b.train_names == [n for n in a.train_names if n not in suspects]
    assert len(b.train[0]) == len(b.train[1]) == len(b.train_names)
    assert b.val_names == a.val_names and c.val_names == a.val_names  # the validation split is untouched
    assert c.train_names == a.train_names and c.label_policy["action"] == "fix"
    assert check_labels(list(c.train[1]), c.train_names, comp).suspects == []
    with pytest.raises(ConfigError, match="choose one"):
        build_config("msf-lmsa", {**base, "data.exclude_suspect": True, "data.fix_suspect": True},
                     cpx_workspace.experiments_dir, cpx_host)


@pytest.mark.slow
def test_real_training_masks_hold_68_suspects(shared_data, comp):
    from cpx.data import check_dataset

    check = check_dataset(shared_data, comp, labels=True).labels
    assert check.checked == 900 and len(check.suspects) == 68 and len(check.selected(0.5)) == 68
    assert check.agree > 10 * check.disagree
