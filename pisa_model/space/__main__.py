"""Try the PISA demo Space locally: `python -m pisa_model.space --model out/demo/model` (then open the printed URL).

Runs the same app.py that upload.py stages, with freshly generated example photos."""

import sys
import tempfile

from . import write_examples
from .app import main

if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="pisa-space-examples-") as examples:
        write_examples(examples)
        main([*sys.argv[1:], "--examples", examples])
