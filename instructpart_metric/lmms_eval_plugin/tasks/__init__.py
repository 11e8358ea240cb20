"""lmms-eval task YAML for InstructPart (`instructpart_trps`, `instructpart_orps`, group `instructpart`) and the
functions they name (`utils.py`). lmms-eval loads `utils.py` by path; the tests import it as a module."""
