"""One error convention for every command of the project (`python -m instructpart_metric score`,
`python -m pisa_model.{train,evaluate,demo}`, `upload.py`, and the dataset CLI), the same as argparse's own:

    exit 2   bad input: a missing, unreadable, corrupt or invalid input, or bad arguments (argparse's code);
    exit 1   a failed operation: writing the output, a push;
    stderr   one line, `<prog>: error: <path>: <what>` (the path wherever a file is concerned), no traceback.

A command runs its work through `run_command`; code that writes a command's output wraps the writing in
`writing(path)` (or raises `OperationFailed`), so that an OSError there reads as a failed operation naming
that path, while an OSError anywhere else (reading an input) is bad input.
"""

import contextlib
import importlib.util
import os
import sys

BAD_INPUT = 2
FAILED = 1


class OperationFailed(Exception):
    """The command's input was fine but its operation failed (exit 1); the message names the path."""


def describe_os_error(error: OSError) -> str:
    """`<path>: <reason>` of an OSError, e.g. `out/results.json: Is a directory`."""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{error.filename}: {reason}" if error.filename is not None else reason


def _write_failure(path: str, error: OSError) -> str:
    reason = error.strerror or str(error) or type(error).__name__
    culprit = os.fspath(error.filename) if isinstance(error.filename, (str, bytes, os.PathLike)) else None
    if isinstance(culprit, str) and os.path.abspath(culprit) != os.path.abspath(path):
        if os.path.basename(culprit).startswith(".tmp-"):  # the atomic writer's temporary beside `path`
            return reason
        if isinstance(error, (FileExistsError, NotADirectoryError)) and os.path.isfile(culprit):
            return f"{culprit} is a file, not a folder"
        return f"{culprit}: {reason}"
    return reason


@contextlib.contextmanager
def writing(path: str):
    """Turn an OSError raised while writing `path` into `OperationFailed("<path>: cannot write: <reason>")`."""
    try:
        yield
    except OSError as error:
        raise OperationFailed(f"{path}: cannot write: {_write_failure(path, error)}") from None


def check_writable(path: str, *, folder: bool = False) -> None:
    """Fail before the work, not after it, when `path` (a file, or a folder with `folder=True`) cannot be
    written: an existing folder where a file goes (or the reverse), a file where a parent folder goes, or a
    parent that cannot be written. Creates nothing."""
    if os.path.exists(path) and os.path.isdir(path) != folder:
        raise OperationFailed(f"{path}: cannot write: {'not a folder' if folder else 'Is a directory'}")
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise OperationFailed(f"{path}: cannot write: {ancestor} is a file, not a folder")
    target = path if os.path.exists(path) and folder else ancestor
    if not os.access(target, os.W_OK | os.X_OK):
        raise OperationFailed(f"{path}: cannot write: Permission denied")


def one_line(error: BaseException) -> str:
    """The error's message on one line (OSErrors as `<path>: <reason>`)."""
    text = describe_os_error(error) if isinstance(error, OSError) else str(error)
    return " ".join(text.split()) or type(error).__name__


def report_error(prog: str, error: BaseException) -> int:
    """Print `<prog>: error: <message>` on stderr; returns the exit status of the convention."""
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
    return FAILED if isinstance(error, OperationFailed) else BAD_INPUT


def quiet_library_progress_bars() -> None:
    """Turn off the libraries' progress bars (datasets' "Generating split", transformers' "Loading weights",
    the Hub's downloads): off a terminal they are lines of carriage returns in a log, not progress."""
    from huggingface_hub.utils import disable_progress_bars

    if "datasets" in sys.modules or importlib.util.find_spec("datasets") is not None:  # absent on an offline GPU node
        import datasets

        datasets.disable_progress_bars()
    disable_progress_bars()  # transformers reads this when it is imported
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()


def run_command(prog: str, function, *args, bad_input: tuple = ()) -> int:
    """`function(*args)` with the convention applied: 0 when it returns, 1 or 2 with one stderr line when it
    raises an expected error; anything else is a bug and keeps its traceback. `bad_input` adds exception
    types read as bad input (e.g. a library's format error). The libraries' progress bars show only when
    stderr is a terminal."""
    if not sys.stderr.isatty():
        quiet_library_progress_bars()
    try:
        function(*args)
    except (OperationFailed, ValueError, OSError, *bad_input) as error:
        return report_error(prog, error)
    return 0
