"""Writing files so that a reader (or a killed run) never sees half of one: every package writes through here."""

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile

logger = logging.getLogger(__name__)


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_atomic(path: str, write) -> None:
    """`write(temporary_path)` beside `path`, then rename it over `path`; the temporary goes on any failure."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the file from other users
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_text_atomic(path: str, text: str) -> None:
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomic(path, write)


def write_json_atomic(path: str, payload, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(payload, indent=indent, ensure_ascii=False) + "\n")


class OutputBusyError(OSError):
    """Another live process is writing the same output folder; the message is one line naming it."""


def _hidden_names(name: str) -> tuple:
    """The lock, staging-folder pattern and backup of output `name`, all hidden beside it.

    mkdtemp's random suffixes hold no dot, so `.NAME.partial-<suffix>` never matches another output's names.
    """
    return f".{name}.lock", re.compile(rf"\.{re.escape(name)}\.partial-[A-Za-z0-9_]+"), f".{name}.replaced"


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _lock(lock_path: str, target: str) -> int:
    """An exclusive flock on `lock_path` (created if needed), refused at once when a live process holds it.

    flock is released by the kernel when its holder dies, even by SIGKILL, so a lock left by a killed
    run is free. The holder deletes the lock file when done: a process that opened the old file before the
    deletion would lock an orphan, so the lock counts only if the path still names the locked file.
    """
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(
                f"{target}: another run is writing it (pid {holder}); wait for it or choose another output"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def _recover(parent: str, name: str, target: str) -> None:
    """Under the lock, whatever a killed run of this output left beside it is stale: restore or remove it."""
    _, partial, backup_name = _hidden_names(name)
    backup = os.path.join(parent, backup_name)
    if os.path.lexists(backup):
        if os.path.lexists(target):  # killed after the new output was in place: the backup is the old one
            _remove(backup)
        else:  # killed between an overwrite's two renames: the old output comes back
            os.rename(backup, target)
            logger.warning("%s: restored the previous output (an overwrite of it was interrupted)", target)
    for entry in os.listdir(parent):
        if partial.fullmatch(entry):
            _remove(os.path.join(parent, entry))
            logger.info("%s: removed %s left by an interrupted run", target, entry)


def _rename_no_replace(staging: str, target: str) -> None:
    """Rename, unless something took `target` meanwhile (a process not using the lock): keep that instead.

    rename(2) refuses to replace a file or a non-empty folder; an empty folder holds nothing to lose.
    """
    try:
        os.rename(staging, target)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
        raise OutputBusyError(f"{target}: appeared while this run was writing it; it was left as it is") from None


@contextlib.contextmanager
def publish_folder(target: str, *, overwrite: bool = False, replaceable=lambda path: True):
    """Yield an empty staging folder beside `target`; on success it becomes `target` in one rename.

    One process at a time writes a given `target` (a lock beside it; a second gets `OutputBusyError` at
    once). An existing `target` is an error unless `overwrite` and `replaceable(target)`; it is kept until
    the new folder is whole. What killed runs left beside `target` (staging folders, an overwrite caught
    between its two renames) is cleaned, or restored, by the next run. Nothing is left on any failure.
    """
    target = os.path.abspath(target)
    parent, name = os.path.split(target)
    lock_name, _, backup_name = _hidden_names(name)
    lock_path = os.path.join(parent, lock_name)
    try:
        os.makedirs(parent, exist_ok=True)
        fd = _lock(lock_path, target)
    except FileExistsError:  # makedirs met a file where a folder of the path should be
        raise NotADirectoryError(errno.ENOTDIR, "a file stands where the output's folder should be", parent) from None
    except OSError as error:
        if error.errno is None:  # OutputBusyError: its message says it all
            raise
        # Name the output the user chose, not the lock file beside it.
        raise OSError(error.errno, f"cannot write there ({error.strerror})", target) from None
    try:
        _recover(parent, name, target)
        replacing = os.path.lexists(target)
        if replacing:
            if not overwrite:
                raise FileExistsError(f"{target}: already exists (pass --overwrite / overwrite=True to replace it)")
            if not replaceable(target):
                raise FileExistsError(
                    f"{target}: already exists and is not a folder this command wrote; refusing to replace it"
                )
        staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; the output is an ordinary folder
        try:
            yield staging
            if replacing and os.path.lexists(target):
                # Keep the old output until the new one is in place; a kill in between is undone by the next run.
                backup = os.path.join(parent, backup_name)
                os.rename(target, backup)
                try:
                    os.rename(staging, target)
                except BaseException:
                    os.rename(backup, target)
                    raise
                _remove(backup)
            else:
                _rename_no_replace(staging, target)
        except BaseException as error:
            if os.path.lexists(staging):
                shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError) and error.errno and str(error.filename or "").startswith(staging):
                # A write into the hidden staging folder failed (disk full, ...): name the output instead.
                raise OSError(error.errno, f"writing it failed ({error.strerror})", target) from None
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock_path)
        os.close(fd)
