from __future__ import annotations

from pathlib import Path

import pytest

from amflow_edge.common.durable import replace_durably, replacing


def test_a_replaced_file_has_the_new_bytes_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "scan.json"
    target.write_bytes(b"old")
    replace_durably(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["scan.json"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "overlay_cam01.png"
    target.write_bytes(b"old")

    def encode_and_fail() -> None:
        with replacing(target) as temporary:
            temporary.write_bytes(b"half")
            raise OSError("encoder failed")

    with pytest.raises(OSError, match="encoder"):
        encode_and_fail()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["overlay_cam01.png"]


def test_the_temporary_keeps_the_suffix_writers_read_the_format_from(tmp_path: Path) -> None:
    with replacing(tmp_path / "model.npz") as temporary:
        assert temporary.suffix == ".npz" and temporary.parent == tmp_path
        temporary.write_bytes(b"x")


def test_a_copy_a_crash_left_is_replaced_not_kept(tmp_path: Path) -> None:
    target = tmp_path / "scan.json"
    leftover = tmp_path / ".scan.tmp.json"
    leftover.write_bytes(b"from a crash")
    replace_durably(target, b"new")
    assert target.read_bytes() == b"new" and not leftover.exists()


def test_shared_files_get_a_temporary_of_their_own_per_writer(tmp_path: Path) -> None:
    with replacing(tmp_path / "r.json", shared=True) as first, replacing(tmp_path / "r.json") as second:
        assert first != second
        first.write_bytes(b"a")
        second.write_bytes(b"b")
    assert (tmp_path / "r.json").read_bytes() == b"a"
