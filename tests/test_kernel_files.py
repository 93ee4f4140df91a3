"""cpx.kernel.files: atomic writes, sha256, JSON."""

import pytest

from cpx.kernel import files as utils


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    utils.atomic_write_text(target, "one")
    utils.atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]  # no temp files left
    assert target.stat().st_mode & 0o777 == 0o666 & ~utils._UMASK


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out" / "f.bin"
    utils.atomic_write_bytes(target, b"old")

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        utils.atomic_torch_save(Boom(), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]
