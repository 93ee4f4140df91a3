"""The data of a run: its training tensors (uint8, at the training size, through the decode-once
cache) and its validation images, from a data folder or the competition's synthetic data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from cpx import data as datalib
from cpx.data.competition import Competition
from cpx.data.labels import apply_label_policy
from cpx.eval.validate import Labelled, labelled_files, read_labelled
from cpx.kernel.config import ExperimentConfig
from cpx.kernel.errors import DataError
from cpx.kernel.workspace import Workspace


@dataclass
class PreparedData:
    """The data of a run in memory: uint8 training tensors at the training size, validation
    images and masks at their own size, and where they came from (``val_part``: the training
    folders, a share held out, or the organisers' validation folders).
    """

    root: Path
    fingerprint: str
    train_names: list[str]
    val_names: list[str]
    train: tuple[torch.Tensor, torch.Tensor]
    val: Optional[list[Labelled]]
    synthetic: bool
    # what data.exclude_suspect / data.fix_suspect did: {"action", "names", "pairs", "checked"}
    label_policy: Optional[dict] = None
    val_part: str = "train"


def synthetic_root(workspace: Workspace, competition: Competition, count: int, size: int, seed: int) -> Path:
    """Generate (once) the competition's synthetic data set into the workspace cache."""
    if competition.synthesize is None:
        raise DataError(f"competition {competition.name} has no synthetic data; pass --data DIR")
    # a tenth more unlabelled images, so predict and package work on synthetic data too; a
    # competition with the organisers' own validation folders gets a tenth of the count there
    tests = max(2, count // 10)
    vals = max(2, count // 10) if competition.layout.has_val else 0
    root = workspace.cache_dir / "synthetic" / f"{competition.name}-n{count}-t{tests}-s{size}-seed{seed}"
    if not root.is_dir():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        datalib.write_dataset(tmp, competition, competition.synthesize(count + tests, size, seed), test_count=tests,
                              val_count=vals)
        os.replace(tmp, root)
    return root


def prepare_data(config: ExperimentConfig, competition: Competition, workspace: Workspace) -> PreparedData:
    """Load (through the decode-once cache) the training and validation data of ``config``: its
    data folder, or the competition's synthetic data generated once into the cache.

    :raises DataError: a missing folder, too few labelled images, or a bad file (named).
    """
    d = config.data
    if d.path:
        # a relative path recorded by an older cpx: the workspace's, never the current directory's
        root = (workspace.root / Path(d.path).expanduser()).resolve()
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist")
        synthetic = False
    else:
        root = synthetic_root(workspace, competition, d.synthetic_count, d.synthetic_size, d.synthetic_seed)
        synthetic = True
    names = datalib.train_names(root, competition)
    val_part = "train"
    if competition.layout.has_val and d.val_fraction > 0:
        # the organisers' split: every training pair trains, their validation pairs validate
        train_names, val_names, val_part = names, datalib.scan(root, competition).val_pairs, "val"
        if not val_names:
            raise DataError(f"{competition.data_path(root, 'val_images')}: no validation pairs (competition "
                            f"{competition.name} names the organisers' validation folders)")
    else:
        if len(names) < 2:
            raise DataError(f"{root}: need at least 2 labelled images, found {len(names)}")
        train_names, val_names = datalib.split_names(names, d.val_fraction, d.split_seed)
    fp = datalib.fingerprint(root, competition)
    cache = workspace.cache_dir if d.cache else None
    # mapped, not copied: the cache file's pages are the training tensors (issue 20, item 7)
    train = datalib.load_dataset(root, competition, train_names, d.image_size, cache_dir=cache, mmap=True)
    label_policy = None
    if d.exclude_suspect or d.fix_suspect:
        # only training masks: the validation split stays the competition's, labels and all
        keep, masks, check, chosen = apply_label_policy(train_names, train[1], competition,
                                                        exclude=d.exclude_suspect, fix=d.fix_suspect,
                                                        min_confidence=d.suspect_min_confidence)
        label_policy = {"action": "exclude" if d.exclude_suspect else "fix", "checked": check.checked,
                        "min_confidence": d.suspect_min_confidence, "side": check.side,
                        "names": [s.name for s in chosen], "pairs": [[list(p) for p in s.pairs] for s in chosen]}
        if len(keep) < len(train_names):
            index = torch.tensor(keep, dtype=torch.long)
            train_names = [train_names[i] for i in keep]
            train = (train[0].index_select(0, index), masks.index_select(0, index))
        else:
            train = (train[0], masks)
        if not train_names:
            raise DataError(f"{root}: every training mask is a label suspect; nothing left to train on")
    val = None
    if val_names:
        # images and masks at their own size: validation predicts and scores them as the scorer does
        files = labelled_files(root, val_names, competition, val_part)
        val = [item for batch in read_labelled(files, competition, 16) for item in batch]
    return PreparedData(root, fp, train_names, val_names, train, val, synthetic, label_policy, val_part)
