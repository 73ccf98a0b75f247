"""The one atomic write and the one lock: whole files or none, the user's umask, Ctrl-C held."""

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from fireablate.files import atomic_open, atomic_write, lock, remove_stale_temporaries


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o644  # readable by colleagues


def test_stale_temporaries_from_a_kill_are_removed(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"torn")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    remove_stale_temporaries(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp"]


def test_ctrl_c_during_a_write_waits_for_the_write_to_finish(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from fireablate.files import atomic_open
        # Python's own Ctrl-C handler, whatever disposition this process inherited
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with atomic_open({str(tmp_path / 'ck')!r}) as fh:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of the write
            fh.write(b"whole")
        print("not reached")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "KeyboardInterrupt" in done.stderr and "not reached" not in done.stdout
    assert (tmp_path / "ck").read_bytes() == b"whole"  # the interrupt came after the file was whole


def test_a_lock_on_a_symlink_locks_its_target(tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("")
    (tmp_path / "link.csv").symlink_to(target)
    with lock(tmp_path / "link.csv"):
        pass
    # writers through the link and through the real path take the same lock file
    assert (tmp_path / "real.csv.lock").exists() and not (tmp_path / "link.csv.lock").exists()
