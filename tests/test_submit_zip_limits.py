"""Zips that are small on disk but not small inside, and files that would run code: the zip
checker never unpacks past its limits and never runs what a checkpoint holds (issue 9,
sections 1 and 6)."""

from __future__ import annotations

import ast
import io
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpx.cli import main
from cpx.submit import zipcheck, zipentries
from cpx.submit.zipcheck import check_zip

GiB = 2**30


def raw_deflate_zip(path: Path, name: str, size: int, chunk: int = 64 * 2**20, extra: dict | None = None) -> Path:
    """A zip whose entry ``name`` unpacks to ``size`` zero bytes, built without compressing
    ``size`` bytes: a deflate block of ``chunk`` zeros ending in a full flush (which resets the
    compressor's history) is a valid stream on its own, so it can be repeated."""
    assert size % chunk == 0
    zeros = bytes(chunk)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush()
    crc = 0
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    packed = len(block) * (size // chunk) + len(tail)
    encoded = name.encode()
    with open(path, "wb") as fh:
        if extra:  # ordinary small entries first, written by zipfile
            with zipfile.ZipFile(fh, "w") as zf:
                for n, data in extra.items():
                    zf.writestr(n, data)
                central = [(i, i.header_offset) for i in zf.infolist()]
                zf.fp = None  # keep zipfile from writing its own central directory
        else:
            central = []
        fh.seek(0, os.SEEK_END)
        offset = fh.tell()
        fh.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, packed, size, len(encoded), 0))
        fh.write(encoded)
        for _ in range(size // chunk):
            fh.write(block)
        fh.write(tail)
        start = fh.tell()
        for info, header_offset in central:
            n = info.filename.encode()
            fh.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, info.compress_type, 0, 0x21,
                                 info.CRC, info.compress_size, info.file_size, len(n), 0, 0, 0, 0, 0, header_offset))
            fh.write(n)
        fh.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, packed, size,
                             len(encoded), 0, 0, 0, 0, 0, offset))
        fh.write(encoded)
        end = fh.tell()
        count = len(central) + 1
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, end - start, start, 0))
    return path


def test_the_zip_builder_makes_a_valid_zip(tmp_path):
    path = raw_deflate_zip(tmp_path / "small.zip", "zeros.bin", 4 * 2**20, chunk=2**20, extra={"a.txt": b"hi"})
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert zf.read("zeros.bin") == bytes(4 * 2**20) and zf.read("a.txt") == b"hi"


def test_a_small_zip_holding_a_huge_entry_is_refused_without_unpacking_it(tmp_path, cpx_workspace):
    path = raw_deflate_zip(tmp_path / "bomb.zip", "masks/a.png", 2 * GiB)
    assert path.stat().st_size < 4 * 2**20
    # the peak resident memory of this process's own address space (VmHWM); ru_maxrss would
    # include the pytest parent's pages at fork time, which Linux carries across exec
    probe = ("import sys\nfrom cpx.cli import main\ncode = main(sys.argv[1:])\n"
             "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
             "print('MAXRSS_KB', hwm, file=sys.stderr)\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", probe, "package", "--check", str(path), "--competition",
                           "celebamask-mini"], capture_output=True, text=True, cwd=cpx_workspace.root)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "masks/a.png: unpacks to 2,048.0 MiB; cpx reads at most 512.0 MiB per entry (not unpacked)" \
        in " ".join(proc.stderr.split())
    rss_mib = int(proc.stderr.split("MAXRSS_KB")[1].split()[0]) / 1024
    assert rss_mib < 1024, f"{rss_mib:.0f} MiB used"  # unpacking it into memory would take 2 GiB at least


def test_the_huge_entry_is_never_opened(tmp_path, cpx_host, monkeypatch):
    # streaming it (a CRC check in blocks) would not show in memory: no open() of it at all
    path = raw_deflate_zip(tmp_path / "bomb.zip", "masks/a.png", 2 * GiB)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: (
        opened.append(getattr(name, "filename", name)), real_open(self, name, *a, **k))[1])
    report = check_zip(path, cpx_host.competition("celebamask-mini"))
    assert [p.kind for p in report.problems if p.path == "masks/a.png"] == ["entry_too_large"]
    assert "masks/a.png" not in opened


def test_a_zip_bomb_under_the_entry_limit_is_caught_by_its_ratio(tmp_path, cpx_host):
    path = raw_deflate_zip(tmp_path / "ratio.zip", "solution/ckpt.pth", 256 * 2**20)
    report = check_zip(path, cpx_host.competition("celebamask-mini"))
    (problem,) = [p for p in report.problems if p.kind == "compression_ratio"]
    assert problem.path == "solution/ckpt.pth" and "the mark of a zip bomb" in problem.message
    assert "weights_unreadable" not in {p.kind for p in report.problems}  # it was never loaded


def test_limits_on_the_total_and_on_mask_pixels(tmp_path, cpx_host, monkeypatch):
    comp = cpx_host.competition("celebamask-mini")
    monkeypatch.setattr(zipentries, "MAX_TOTAL_BYTES", 3 * 2**20)
    path = raw_deflate_zip(tmp_path / "total.zip", "masks/b.png", 4 * 2**20, chunk=2**20)
    kinds = {p.kind for p in check_zip(path, comp).problems}
    assert "zip_too_large" in kinds and "unreadable" not in kinds
    monkeypatch.undo()

    # PNGs of a few bytes whose headers claim 81 and 1,600 million pixels: refused from the header
    small = tmp_path / "pixels.zip"
    with zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("masks/c.png", png_header_only(9000, 9000))
        zf.writestr("masks/d.png", png_header_only(40000, 40000))
    report = check_zip(small, comp)
    # the one mask reader (cpx.data.images) refuses them, kind too_large, naming the limit
    problems = {p.path: p.message for p in report.problems if p.kind == "too_large"}
    assert problems["masks/c.png"] == ("mask is too large to open safely (9000x9000, over the limit of "
                                       "67,108,864 pixels); it may be a decompression bomb")
    assert "over Pillow's limit" in problems["masks/d.png"]


def png_header_only(width: int, height: int) -> bytes:
    """A palette PNG that claims ``width`` x ``height`` pixels but holds one row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", bytes(768))
            + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


def test_submit_zip_refuses_the_bomb_in_one_line_per_problem(tmp_path, cpx_workspace, capsys):
    path = raw_deflate_zip(tmp_path / "bomb.zip", "masks/a.png", 1 * GiB)
    code = main(["submit", "v1", "--zip", str(path), "--competition", "celebamask-mini"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "problems; not registered" in lines[0]
    assert any("masks/a.png: unpacks to 1,024.0 MiB" in line for line in lines)


class _RunsCode:
    marker = ""

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("how", ["check", "zip"])
def test_weights_that_would_run_code_are_never_unpickled(how, tmp_path, cpx_workspace, capsys):
    marker = tmp_path / "code-ran"
    evil = _RunsCode()
    evil.marker = str(marker)
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": evil}, buf)
    mask = Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="P")
    png = io.BytesIO()
    mask.save(png, format="PNG")
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("masks/a.png", png.getvalue())
        zf.writestr("solution/run.py", "# --input --output --weights\n")
        zf.writestr("solution/requirements.txt", "torch\n")
        zf.writestr("solution/ckpt.pth", buf.getvalue())
    args = (["package", "--check", str(path)] if how == "check" else ["submit", "v1", "--zip", str(path)])
    code = main(args + ["--competition", "celebamask-mini"])
    out, err = capsys.readouterr()
    assert code != 0 and not marker.exists()
    assert "solution/ckpt.pth: torch.load(weights_only=True) cannot read it" in " ".join((out + err).split())


def test_every_torch_load_in_cpx_submit_is_weights_only():
    root = Path(zipcheck.__file__).parent
    calls = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" \
                    and getattr(node.func.value, "id", None) == "torch":
                calls.append(path.name)
                flags = {k.arg: k.value for k in node.keywords}
                assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
                    f"{path}:{node.lineno}"
    assert sorted(set(calls)) == ["solutioncheck.py", "standalone_run.py"]
