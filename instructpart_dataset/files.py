"""Writing files so that a reader (or a killed run) never sees half of one: every package writes through here."""

import json
import os
import tempfile


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
