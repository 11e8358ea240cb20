"""`upload.py`, the checkout's top-level script, for the benchmarks that stage a Space with it. The packages
import from the install (`pip install -e .`); the script is not installed, so it is loaded from its file."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_upload():
    """The `upload` module of this checkout (the one already imported, if any)."""
    if "upload" not in sys.modules:
        spec = importlib.util.spec_from_file_location("upload", os.path.join(ROOT, "upload.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["upload"] = module
        spec.loader.exec_module(module)
    return sys.modules["upload"]
