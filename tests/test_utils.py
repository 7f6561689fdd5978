"""utils.py: atomic writes, their leftovers, disk-space checks and command-line booleans."""

import errno

import pytest

from monai_cxrssl import utils
from monai_cxrssl.utils import as_bool, atomic_write, check_free_space, format_bytes, remove_stale_temporaries


def test_atomic_write_replaces_the_file_only_when_the_write_completes(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with atomic_write(target, "w") as f:
        f.write("first")
    assert target.read_text() == "first" and oct(target.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"  # the old file is intact...
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]  # ...and no temporary is left


def test_leftover_temporaries_of_a_killed_write_are_removed(tmp_path):
    (tmp_path / ".checkpoint.pt.ab12cd34.tmp").write_bytes(b"partial")
    (tmp_path / "checkpoint.pt").write_bytes(b"whole")
    (tmp_path / ".hidden.tmp").write_bytes(b"not ours")  # no mkstemp suffix: kept
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".checkpoint.pt.ab12cd34.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp", "checkpoint.pt"]
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_free_space_check_names_what_where_and_how_much(tmp_path, monkeypatch):
    check_free_space(tmp_path / "not" / "yet", 1, "a checkpoint")  # the nearest existing parent is probed
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    with pytest.raises(OSError, match=r"a checkpoint in .*needs about 2\.0 KB.*1\.0 KB free") as e:
        check_free_space(tmp_path, 2048, "a checkpoint")
    assert e.value.errno == errno.ENOSPC
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.5 KB" and format_bytes(3 * 1024 ** 3) == "3.0 GB"


@pytest.mark.parametrize("value,expected", [(True, True), (0, False), (1, True), ("false", False), (" Yes ", True),
                                            ("off", False), ("", False)])
def test_as_bool_reads_command_line_values(value, expected):
    assert as_bool(value) is expected


def test_as_bool_names_the_setting_it_cannot_read():
    with pytest.raises(ValueError, match="progress must be true or false, got 'maybe'"):
        as_bool("maybe", "progress")
    with pytest.raises(ValueError, match="got 2"):
        as_bool(2)
