"""A bundle's files, read without trusting them.

A bundle comes from someone else: a zip is judged by the rules of ``cpx package --check``
(:mod:`cpx.submit.zipentries`: no absolute or ``..`` paths, no links, no entry or total over the
size caps, no entry inflating past the ratio cap) before anything is unpacked; a folder may hold
no links. Junk that archivers add (``__MACOSX/``, ``.DS_Store``) and a repeated entry (the first
is kept) are passed over, as Codabench's unpacker does. Only what cpx needs (``competition.yaml``,
the scoring programs) is ever unpacked, each file streamed within the entry cap into a folder it
cannot leave; a program given as a zip inside the bundle is checked by the same rules.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Callable

from cpx.kernel.errors import BundleError
from cpx.submit.checkreport import CheckReport
from cpx.submit.zipentries import MAX_ENTRY_BYTES, MAX_TOTAL_BYTES, READ_LIMIT, entry_problems, mib, size_problems

COMPETITION_YAML = "competition.yaml"
# what archivers add on their own, and an entry given twice: Codabench unpacks past them
PASSED_OVER = frozenset({"macosx", "junk_file", "duplicate"})


def _refuse(label: str, report: CheckReport) -> None:
    problems = [p for p in report.problems if p.kind not in PASSED_OVER]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BundleError(f"{label}: not a safe bundle: {problems[0]}{more}; nothing was unpacked")


class _Zip:
    """The regular files of a checked zip, by name."""

    def __init__(self, path: Path, label: str):
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise BundleError(f"{label}: not a readable zip ({exc})") from None
        infos = self.zf.infolist()
        report = CheckReport(path=label, competition="")
        size_problems(infos, report)
        keep = entry_problems(infos, report)
        _refuse(label, report)
        self.infos = {i.filename: i for i in keep}

    def names(self) -> list[str]:
        return sorted(self.infos)

    def size(self, name: str) -> int:
        return self.infos[name].file_size

    def open(self, name: str) -> IO[bytes]:
        return self.zf.open(self.infos[name])

    def close(self) -> None:
        self.zf.close()


class _Folder:
    """The regular files of a folder holding no links."""

    def __init__(self, root: Path, label: str):
        self.root = root
        names = []
        for folder, dirs, files in os.walk(root):
            for entry in dirs + files:
                path = Path(folder) / entry
                if path.is_symlink():
                    raise BundleError(f"{label}: not a safe bundle: {path.relative_to(root).as_posix()}: symbolic "
                                      "link; a bundle holds real files")
            names += [(Path(folder) / f).relative_to(root).as_posix() for f in files]
        self._names = sorted(names)

    def names(self) -> list[str]:
        return self._names

    def size(self, name: str) -> int:
        return (self.root / name).stat().st_size

    def open(self, name: str) -> IO[bytes]:
        return open(self.root / name, "rb")

    def close(self) -> None:
        pass


class BundleArchive:
    """The files of a bundle (a zip or a folder) by posix path from the folder holding
    ``competition.yaml``; use as a context manager.

    :raises BundleError: not a zip or a folder, an unsafe entry (one line naming it and how many
        more), or no ``competition.yaml``.
    """

    def __init__(self, path: os.PathLike):
        self.path = Path(path).expanduser()
        self.label = str(self.path)
        self.notes: list[str] = []
        if self.path.is_dir():
            self._files = _Folder(self.path, self.label)
        elif self.path.is_file():
            self._files = _Zip(self.path, self.label)
        else:
            raise BundleError(f"--bundle: {self.path} is neither a zip nor a folder")
        names = self._files.names()
        self.prefix = ""
        if COMPETITION_YAML not in names:
            tops = {n.split("/", 1)[0] for n in names}
            if len(tops) == 1 and f"{next(iter(tops))}/{COMPETITION_YAML}" in names:
                self.prefix = next(iter(tops)) + "/"
                self.notes.append(f"everything sits inside {self.prefix}; Codabench wants competition.yaml at the "
                                  "top of the zip (read from there anyway)")
            else:
                self._files.close()
                raise BundleError(f"{self.label}: no competition.yaml at its top; a Codabench bundle has its "
                                  "competition.yaml at the root of the zip")
        self.names = [n[len(self.prefix):] for n in names if n.startswith(self.prefix)]

    def __enter__(self) -> "BundleArchive":
        return self

    def __exit__(self, *exc) -> None:
        self._files.close()

    def has_file(self, name: str) -> bool:
        return _clean(name) in self.names

    def has_folder(self, name: str) -> bool:
        prefix = _clean(name).rstrip("/") + "/"
        return any(n.startswith(prefix) for n in self.names)

    def read_text(self, name: str) -> str:
        """The text of the file ``name`` (UTF-8, within the text limit).

        :raises BundleError: missing, too large or not UTF-8.
        """
        name = _clean(name)
        if name not in self.names:
            raise BundleError(f"{self.label}: no file {name}")
        limit = READ_LIMIT["text"]
        if self._files.size(self.prefix + name) > limit:
            raise BundleError(f"{self.label}: {name} is larger than {mib(limit)}")
        with self._open(name) as fh:
            data = fh.read(limit + 1)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"{self.label}: {name} is not UTF-8 text") from None

    def extract(self, member: str, dest: Path) -> list[str]:
        """Unpack the folder ``member`` of the bundle, or the zip file ``member`` (itself checked
        by the same rules), into the new folder ``dest``; returns the files written, relative
        to ``dest``.

        :raises BundleError: no such file or folder, an unsafe entry, or more than the caps.
        """
        member = _clean(member).rstrip("/")
        dest = Path(dest)
        if member in self.names:
            if not member.lower().endswith(".zip"):
                raise BundleError(f"{self.label}: {member} is a file; expected a folder or a .zip")
            return self._extract_nested(member, dest)
        prefix = member + "/" if member else ""
        inside = [n for n in self.names if n.startswith(prefix)]
        if not inside:
            raise BundleError(f"{self.label}: no file or folder {member} in the bundle")
        return _copy_files(self.label, [(n[len(prefix):], self._files.size(self.prefix + n),
                                         lambda n=n: self._open(n)) for n in inside], dest)

    def _open(self, name: str) -> IO[bytes]:
        return self._files.open(self.prefix + name)

    def _extract_nested(self, member: str, dest: Path) -> list[str]:
        label = f"{self.label}: {member}"
        with tempfile.TemporaryDirectory(prefix="cpx-bundle-") as tmp:
            _copy_files(self.label, [("nested.zip", self._files.size(self.prefix + member),
                                      lambda: self._open(member))], Path(tmp))
            inner = _Zip(Path(tmp) / "nested.zip", label)
            try:
                return _copy_files(label, [(n, inner.size(n), lambda n=n: inner.open(n)) for n in inner.names()
                                           if not n.startswith("__MACOSX/")], dest)
            finally:
                inner.close()


def _clean(name: str) -> str:
    name = str(name).replace("\\", "/").strip()
    while name.startswith("./"):
        name = name[2:]
    return name


def _copy_files(label: str, files: list[tuple[str, int, Callable[[], IO[bytes]]]], dest: Path) -> list[str]:
    """Stream ``(relative name, recorded size, opener)`` files into ``dest`` within the caps;
    a name leaving ``dest`` is refused (the entry checks already refused them: defence in depth)."""
    total = sum(size for _, size, _ in files)
    if total > MAX_TOTAL_BYTES:
        raise BundleError(f"{label}: unpacks to {mib(total)}; cpx unpacks at most {mib(MAX_TOTAL_BYTES)}")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written = []
    for rel, size, opener in files:
        if size > MAX_ENTRY_BYTES:
            raise BundleError(f"{label}: {rel} unpacks to {mib(size)}; cpx unpacks at most {mib(MAX_ENTRY_BYTES)} "
                              "per file")
        target = (root / rel).resolve()
        if root not in target.parents:
            raise BundleError(f"{label}: not a safe bundle: {rel} leaves the folder it is unpacked into")
        target.parent.mkdir(parents=True, exist_ok=True)
        copied = 0
        try:
            with opener() as src, open(target, "xb") as out:
                while True:
                    block = src.read(1 << 20)
                    if not block:
                        break
                    copied += len(block)
                    if copied > MAX_ENTRY_BYTES:
                        raise BundleError(f"{label}: {rel} unpacks to more than {mib(MAX_ENTRY_BYTES)}")
                    out.write(block)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise BundleError(f"{label}: {rel} cannot be unpacked ({exc})") from None
        except FileExistsError:
            raise BundleError(f"{label}: {rel} is given twice") from None
        written.append(rel)
    return written
