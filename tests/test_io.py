import pytest

from pcr.io import atomic_dir, atomic_file


def test_atomic_dir_replaces_on_success_and_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_atomic_file_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_text("{}")
    assert target.read_text() == "{}"
