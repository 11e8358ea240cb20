"""Imports on first use: optional dependencies (with a one-line hint naming the extra that installs them) and
packages' lazily exported names."""

import importlib
import sys


def require(module: str, extra: str, purpose: str):
    """`import module`, or an ImportError saying `purpose needs <package>: pip install instructpart[<extra>]`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        raise ImportError(f"{purpose} needs {package}: pip install instructpart[{extra}]") from error


def lazy_exports(package: str, exports: dict) -> tuple:
    """`(__getattr__, __dir__)` for a package whose names `exports` maps to the submodule defining each (PEP 562):
    a name's submodule is imported when the name is first used, so importing the package stays light."""
    module = sys.modules[package]

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            setattr(module, name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(module)) | set(getattr(module, "__all__", ())))

    return __getattr__, __dir__
