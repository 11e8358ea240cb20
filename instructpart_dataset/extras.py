"""Optional dependencies: imported where used, with a one-line hint naming the extra that installs them."""

import importlib


def require(module: str, extra: str, purpose: str):
    """`import module`, or an ImportError saying `purpose needs <package>: pip install instructpart[<extra>]`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        raise ImportError(f"{purpose} needs {package}: pip install instructpart[{extra}]") from error
