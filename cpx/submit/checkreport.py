"""What a check of a submission found: :class:`CheckReport`, filled by the zip checks
(:mod:`cpx.submit.zipcheck`), the entry checks (:mod:`cpx.submit.zipentries`), the solution
check (:mod:`cpx.submit.solutioncheck`) and each submission format's reader
(:mod:`cpx.submit.formats`), none of which import each other for it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from cpx.kernel.errors import Problem


@dataclass
class CheckReport:
    """What :func:`check_zip` found. ``ok`` when ``problems`` is empty."""

    path: str
    competition: str
    entries: int = 0
    size_bytes: int = 0
    masks: int = 0
    # test images the masks were compared with; None when no test folder was known
    test_images: Optional[int] = None
    test_dir: Optional[str] = None
    solution_required: bool = False
    solution_files: list[str] = field(default_factory=list)
    params: Optional[int] = None
    params_source: str = ""
    # floating-point weights in the checkpoint, batch-norm statistics left out
    weights_params: Optional[int] = None
    # the key the weights were found under in the checkpoint
    weights_key: Optional[str] = None
    max_params: Optional[int] = None
    classes_seen: list[int] = field(default_factory=list)
    manifest: Optional[dict] = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No problems found."""
        return not self.problems

    def add(self, path: str, kind: str, message: str) -> None:
        """Record a problem with ``path`` (as the user sees it in the zip)."""
        self.problems.append(Problem(path, kind, message))

    def to_dict(self) -> dict:
        """Plain data for ``--json``; the manifest without its file list."""
        out = asdict(self)
        out["ok"] = self.ok
        out["manifest"] = None if self.manifest is None else {
            k: v for k, v in self.manifest.items() if k != "files"}
        return out
