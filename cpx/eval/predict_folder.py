"""Folders of images to folders of masks: ``cpx predict``, and the prediction step of
``cpx package``. Every file is checked before any mask is written, masks are written
atomically, and reading the next batch and writing the last one overlap the model's work.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cpx.data.competition import Competition
from cpx.data.images import IMAGE_SUFFIXES, BadFile, inspect_image, read_image, write_mask
from cpx.data.layout import FOLDER_KINDS, scan_images
from cpx.eval.postprocess import PostSpec, post_label
from cpx.eval.predict import (
    Predictor,
    Progress,
    Size,
    check_ensemble_allowed,
    is_ensemble,
    predictor_for_run,
    read_ensemble_spec,
    tta_label,
)
from cpx.kernel.errors import ConfigError, DataError
from cpx.kernel.files import check_writable, remove_stale_temps
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.ledger import Ledger


@dataclass
class PredictReport:
    """What :func:`predict_folder` did: masks written, files skipped with the reason, seconds."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    output_dir: Optional[Path] = None
    tta: tuple = ()
    warnings: list[str] = field(default_factory=list)
    calibrated: bool = False
    post: str = "none"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"written": [str(p) for p in self.written],
                "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
                "seconds": round(self.seconds, 3), "output_dir": str(self.output_dir) if self.output_dir else None,
                "tta": tta_label(self.tta), "calibrated": self.calibrated, "post": self.post,
                "warnings": list(self.warnings)}


def _inspect_image(path: Path, competition: Competition) -> tuple[Optional[Size], str]:
    """(height, width) of an image that decodes in full to the competition's channels, or
    (None, why not)."""
    try:
        return inspect_image(path, competition.channels, competition.pixel_max), ""
    except BadFile as bad:
        return None, bad.message


def _read_pixels(path: Path, competition: Competition) -> torch.Tensor:
    try:
        arr, _ = read_image(path, competition.channels, competition.pixel_max)
    except BadFile as bad:  # changed on disk since it was inspected
        raise bad.error() from None
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def predict_folder(predictor: Predictor, input_dir: os.PathLike, output_dir: os.PathLike, *,
                   batch_size: int = 8, skip_bad: bool = False, overwrite: bool = False,
                   progress: Progress = None) -> PredictReport:
    """One mask per image of ``input_dir``, same size, into ``output_dir``, named and stored as
    the competition stores masks (``layout.mask_name``: the image's stem and the mask suffix by
    default; its value map and mode, :func:`cpx.data.images.write_mask`).

    Every file is checked before anything is written: an unreadable or non-image file fails
    the call (DataError naming each) unless ``skip_bad``, and existing masks of the same
    names fail it unless ``overwrite``. Each mask is written atomically.
    """
    start = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
    if not input_dir.is_dir():
        raise DataError(f"{input_dir}: input folder does not exist")
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"{output_dir}: exists and is not a folder")
    if output_dir.resolve() == input_dir.resolve():
        raise DataError(f"{output_dir}: choose an output folder other than the input folder")
    competition = predictor.competition
    good, bad = _sort_files(input_dir, competition)
    if bad and not skip_bad:
        lines = [f"{p}: {why}" for p, why in bad]
        raise DataError("\n".join(lines + [f"{len(bad)} bad file(s) in {input_dir}; nothing was written "
                                           "(--skip-bad predicts the rest)"]))
    report = PredictReport(output_dir=output_dir, tta=predictor.tta)
    report.skipped = bad
    if not good:
        raise DataError(f"{input_dir}: no readable images to predict")
    targets = _mask_targets(good, output_dir, competition, overwrite)
    check_writable(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # masks half-written by a predict that was killed; a live writer's temps are seconds old
    remove_stale_temps(output_dir, older_than=60)

    _predict_batches(predictor, _size_batches(good, batch_size), targets, report, progress)
    report.written.sort()
    report.seconds = time.perf_counter() - start
    return report


def _sort_files(input_dir: Path, competition: Competition) -> tuple[list[tuple[Path, Size]], list[tuple[Path, str]]]:
    """The images of ``input_dir`` that decode, with their (height, width), and the bad files
    with the reason, sorted by name.
    """
    suffixes = tuple(dict.fromkeys((*IMAGE_SUFFIXES, *(s.lower() for s in competition.layout.image_suffixes))))
    listing = scan_images(input_dir, suffixes=suffixes)
    good: list[tuple[Path, Size]] = []
    # folders, broken links and second files of one stem, named like images; then other files
    bad: list[tuple[Path, str]] = [(input_dir / p.path, p.message) for p in listing.problems
                                   if p.kind not in FOLDER_KINDS]
    bad += [(path, f"not an image file (suffix {path.suffix or '(none)'}; expected {'/'.join(suffixes)})")
            for path in listing.ignored]
    seen: dict[str, Path] = {}
    for path in listing.test_images:
        size, why = _inspect_image(path, competition)
        target = competition.layout.mask_name(path.name)
        if size is None:
            bad.append((path, why))
        elif target in seen:
            bad.append((path, f"same mask name as {seen[target].name}: both would write {target}"))
        else:
            seen[target] = path
            good.append((path, size))
    bad.sort(key=lambda item: item[0].name)
    return good, bad


def _mask_targets(good: list[tuple[Path, Size]], output_dir: Path, competition: Competition,
                  overwrite: bool) -> dict[Path, Path]:
    """Each image's mask path in ``output_dir``.

    :raises DataError: some masks exist already and ``overwrite`` is off.
    """
    targets = {path: output_dir / competition.layout.mask_name(path.name) for path, _ in good}
    if not overwrite:
        clash = [t for t in targets.values() if t.exists()]
        if clash:
            shown = ", ".join(t.name for t in clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
            raise DataError(f"{output_dir}: {len(clash)} mask(s) already exist ({shown}); "
                            "pass --overwrite or choose another --output")
    return targets


def _size_batches(good: list[tuple[Path, Size]], batch_size: int) -> list[list[tuple[Path, Size]]]:
    """The images in batches of at most ``batch_size``, each of one size."""
    # sorted by size so each batch holds one size and runs as a single forward pass
    order = sorted(good, key=lambda item: (item[1], item[0].name))
    chunks: list[list[tuple[Path, Size]]] = []
    for path, size in order:
        if chunks and len(chunks[-1]) < batch_size and chunks[-1][-1][1] == size:
            chunks[-1].append((path, size))
        else:
            chunks.append([(path, size)])
    return chunks


def _predict_batches(predictor: Predictor, chunks: list[list[tuple[Path, Size]]], targets: dict[Path, Path],
                     report: PredictReport, progress: Progress) -> None:
    """Predict each batch of ``chunks`` and write its masks to ``targets``, adding them to
    ``report.written``.
    """
    competition = predictor.competition
    total = sum(len(chunk) for chunk in chunks)

    def write(chunk, masks) -> None:
        for (path, _), mask in zip(chunk, masks):
            write_mask(targets[path], mask.numpy(), competition)

    # Decoding the next batch and encoding the last one's PNGs run in a second thread while
    # the model works (PIL releases the GIL), so the files cost little time of their own.
    def read(chunk) -> list[torch.Tensor]:
        return [_read_pixels(path, competition) for path, _ in chunk]

    done = 0
    with ThreadPoolExecutor(max_workers=1) as io:
        reading = io.submit(read, chunks[0])
        writing = None
        for k, chunk in enumerate(chunks):
            images = reading.result()
            if k + 1 < len(chunks):
                reading = io.submit(read, chunks[k + 1])
            masks = predictor.predict(images)
            if writing is not None:
                writing.result()  # a failed write stops the run here
            writing = io.submit(write, chunk, masks)
            report.written.extend(targets[p] for p, _ in chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        writing.result()


def predict_run(ref: str, workspace: Workspace, host: PluginHost, input_dir: os.PathLike,
                output_dir: os.PathLike, *, checkpoint: str = "best", tta=(), batch_size: int = 8,
                skip_bad: bool = False, overwrite: bool = False, allow_rule_break: bool = False,
                device: str = "auto", precision: str = "auto", calibration: bool = True, post: PostSpec = None,
                tile: Optional[int] = None, progress: Progress = None) -> PredictReport:
    """``cpx predict``: masks for a folder from a run (with its stored calibration unless
    ``calibration`` is off, the ``post`` steps, in ``tile`` windows when given), refusing
    forbidden ensembles."""
    with Ledger(workspace.ledger_path) as ledger:
        row = ledger.get_run(ref)
    if is_ensemble(row):
        comp_name = row.get("competition") or read_ensemble_spec(row, workspace).get("competition")
        warning = check_ensemble_allowed(row, host.competition(comp_name), allow_rule_break)
    else:
        warning = None
    predictor = predictor_for_run(row["id"], workspace, host, checkpoint=checkpoint, tta=tta,
                                  device=device, precision=precision, calibration=calibration, post=post,
                                  tile=tile)
    report = predict_folder(predictor, input_dir, output_dir, batch_size=batch_size, skip_bad=skip_bad,
                            overwrite=overwrite, progress=progress)
    report.calibrated = predictor.logit_offsets is not None
    report.post = post_label(predictor.post)
    report.warnings.extend(predictor.notes)
    if warning:
        report.warnings.append(warning)
    return report
