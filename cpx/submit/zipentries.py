"""Reading a submission's files without trusting them: the resource limits, the file sources
the checks read through (a staged folder or a zip, by the same posix paths), and the checks on
the zip's entries themselves (unsafe paths, links, OS junk, sizes that betray a zip bomb, broken
data). Used by :mod:`cpx.submit.zipcheck`.

A zip is small on disk but its entries may inflate a thousandfold: an entry is judged by the
sizes the zip records before anything is unpacked, and what is read is read in blocks or up to
a per-kind limit (:data:`READ_LIMIT`).
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from pathlib import Path
from typing import IO, TYPE_CHECKING

from cpx.kernel.files import sha256_stream

if TYPE_CHECKING:
    from cpx.submit.checkreport import CheckReport

# Files that archivers add on their own and that a scorer would count as extra entries.
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})

# Resource limits (bytes once unpacked unless said otherwise)
MAX_ENTRY_BYTES = 512 * 2**20
MAX_TOTAL_BYTES = 4 * 2**30
# unpacked / packed; deflate reaches about 1030:1 on constant data, real masks and weights ~1-10:1
MAX_RATIO = 200
RATIO_FLOOR = 16 * 2**20  # smaller entries are not judged by their ratio
MAX_MASK_PIXELS = 8192 * 8192
# per kind of file read whole: a JSON of run lengths holds every test mask (parsed, each number
# becomes a Python int, about six times its text), an archive (an npz) every mask compressed
READ_LIMIT = {"mask": 64 * 2**20, "text": 16 * 2**20, "json": 128 * 2**20, "archive": MAX_ENTRY_BYTES,
              "weights": MAX_ENTRY_BYTES}


class Skipped(Exception):
    """An entry not read because it broke a resource limit (already reported)."""


class FileSource:
    """Regular files by posix path relative to the submission root."""

    names: list[str]

    def size(self, name: str) -> int:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def skipped(self, name: str) -> bool:
        """Whether ``name`` broke a resource limit and must not be read."""
        return False

    def read(self, name: str, kind: str) -> bytes:
        """The whole file, when it is within the limit for its ``kind`` (a key of
        :data:`READ_LIMIT`: mask, text, json, archive, weights).

        :raises Skipped: it broke a limit (a problem already says so) or exceeds ``kind``'s.
        """
        limit = READ_LIMIT[kind]
        if self.skipped(name) or self.size(name) > limit:
            raise Skipped(name)
        with self.open(name) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise Skipped(name)
        return data

    def sha256(self, name: str) -> str:
        """Hex sha256 of the file, read in blocks."""
        with self.open(name) as fh:
            return sha256_stream(fh)

    def label(self, name: str) -> str:
        """How to name the file in a problem: its path as the user sees it."""
        return name


class DirSource(FileSource):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.names = sorted(p.relative_to(self.root).as_posix()
                            for p in self.root.rglob("*") if p.is_file())

    def size(self, name: str) -> int:
        return (self.root / name).stat().st_size

    def open(self, name: str) -> IO[bytes]:
        return open(self.root / name, "rb")


class ZipSource(FileSource):
    def __init__(self, zf: zipfile.ZipFile, names: dict[str, str], skipped: frozenset = frozenset()):
        # names: path as checked -> name inside the zip (they differ under a nested top folder)
        self.zf = zf
        self.map = names
        self.names = sorted(names)
        self._skipped = skipped  # zip names

    def size(self, name: str) -> int:
        return self.zf.getinfo(self.map[name]).file_size

    def open(self, name: str) -> IO[bytes]:
        # a ZipExtFile never yields more than the entry's recorded size
        return self.zf.open(self.map[name])

    def skipped(self, name: str) -> bool:
        return self.map.get(name, name) in self._skipped

    def label(self, name: str) -> str:
        return self.map.get(name, name)


def entry_problems(infos: list[zipfile.ZipInfo], report: CheckReport) -> list[zipfile.ZipInfo]:
    """Flag unsafe or junk entries; return the regular files worth checking further."""
    keep: list[zipfile.ZipInfo] = []
    seen: set[str] = set()
    macosx = 0
    for info in infos:
        name = info.filename
        parts = [p for p in name.replace("\\", "/").split("/") if p]
        if name in seen:
            report.add(name, "duplicate", "entry appears twice in the zip")
            continue
        seen.add(name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            report.add(name, "absolute_path", "absolute path; entries must be relative to the zip root")
            continue
        if ".." in parts:
            report.add(name, "parent_path", "path climbs out of the zip folder ('..')")
            continue
        if "\\" in name:
            report.add(name, "backslash", "path uses backslashes; a Linux scorer reads them as part "
                                          "of the file name (zip with forward slashes)")
            continue
        if parts and parts[0] == "__MACOSX":
            macosx += 1
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            report.add(name, "symlink", "symbolic link; the scorer needs real files")
            continue
        if info.is_dir():
            continue
        if parts and (parts[-1] in JUNK_NAMES or parts[-1].startswith("._")):
            report.add(name, "junk_file", "file added by the operating system; remove it")
            continue
        keep.append(info)
    if macosx:
        report.add("__MACOSX/", "macosx",
                   f"{macosx} macOS resource entr{'y' if macosx == 1 else 'ies'} under __MACOSX/; "
                   f"zip without them (e.g. `zip -r -X` from inside the folder, or cpx package)")
    return keep


def size_problems(infos: list[zipfile.ZipInfo], report: CheckReport) -> set[str]:
    """Flag entries that would unpack to too much, judged by the sizes the zip records (reading
    never yields more than those); return the names that must not be read."""
    skipped: set[str] = set()
    for info in infos:
        if info.is_dir():
            continue
        if info.file_size > MAX_ENTRY_BYTES:
            report.add(info.filename, "entry_too_large",
                       f"unpacks to {mib(info.file_size)}; cpx reads at most {mib(MAX_ENTRY_BYTES)} per "
                       f"entry (not unpacked)")
            skipped.add(info.filename)
        elif info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(1, info.compress_size):
            ratio = info.file_size / max(1, info.compress_size)
            report.add(info.filename, "compression_ratio",
                       f"{mib(info.compress_size)} unpacks to {mib(info.file_size)} ({ratio:,.0f}:1), the mark "
                       f"of a zip bomb; at most {MAX_RATIO}:1 above {mib(RATIO_FLOOR)} (not unpacked)")
            skipped.add(info.filename)
    total = sum(i.file_size for i in infos if not i.is_dir())
    if total > MAX_TOTAL_BYTES:
        report.add("", "zip_too_large", f"the entries unpack to {mib(total)} in all; cpx reads at most "
                                        f"{mib(MAX_TOTAL_BYTES)} (nothing was unpacked)")
        skipped |= {i.filename for i in infos}
    return skipped


def crc_problems(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], skipped: set[str],
                  report: CheckReport) -> None:
    """Unpack every entry within the limits in 1 MiB blocks, as a scorer would, and flag the
    ones whose data or CRC is broken (``zipfile.testzip`` would unpack the oversized ones too)."""
    for info in infos:
        if info.is_dir() or info.filename in skipped:
            continue
        try:
            with zf.open(info) as fh:
                while fh.read(1 << 20):
                    pass
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
            report.add(info.filename, "corrupt_entry", f"entry cannot be unpacked ({_reason(exc)})")
        except NotImplementedError as exc:
            report.add(info.filename, "corrupt_entry", f"entry uses a compression cpx cannot read ({_reason(exc)})")
        except RuntimeError as exc:  # encrypted entries
            report.add(info.filename, "corrupt_entry", f"entry cannot be unpacked ({_reason(exc)})")


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    return text or exc.__class__.__name__
