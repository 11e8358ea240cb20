"""`files.publish_folder`, the one way an output folder comes into being: what it does when the world moves."""

import errno
import os

import pytest

from instructpart_dataset.toolbox.files import OutputBusyError, publish_folder


def test_a_folder_taken_meanwhile_by_another_program_is_left_as_it_is(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputBusyError, match="appeared while this run was writing it"):
        with publish_folder(str(target)) as staging:
            (tmp_path / "out").mkdir()  # a program that does not take the lock
            (target / "theirs.txt").write_text("keep me")
            open(os.path.join(staging, "ours.txt"), "w").close()
    assert sorted(os.listdir(target)) == ["theirs.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_failed_write_names_the_output_not_the_hidden_staging_folder(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OSError) as info:
        with publish_folder(str(target)) as staging:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(staging, "trps", "shard.parquet"))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert "writing it failed (No space left on device)" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == []


def test_the_lock_is_per_output_and_released_after_use(tmp_path):
    with publish_folder(str(tmp_path / "a")) as staging_a:
        with publish_folder(str(tmp_path / "b")) as staging_b:  # another output: no conflict
            open(os.path.join(staging_b, "b.txt"), "w").close()
        with pytest.raises(
            OutputBusyError, match=f"{tmp_path / 'a'}: another run is writing it \\(pid {os.getpid()}\\)"
        ):
            with publish_folder(str(tmp_path / "a"), overwrite=True):
                pass
        open(os.path.join(staging_a, "a.txt"), "w").close()
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    with publish_folder(str(tmp_path / "a"), overwrite=True) as staging:  # free again
        open(os.path.join(staging, "again.txt"), "w").close()
    assert os.listdir(tmp_path / "a") == ["again.txt"]
