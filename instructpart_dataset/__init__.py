"""The InstructPart benchmark as `datasets` datasets: a release-folder builder, a script-free Hub export.

Names are imported on first use, so that the torch- and datasets-free layers below (the metric core) can
use this package's helpers without loading `datasets`.
"""

from .toolbox.extras import lazy_exports

_EXPORTS = {
    "CONFIGS": "schema",
    "FEATURES": "schema",
    "INSTRUCTION_TYPES": "schema",
    "SPLITS": "schema",
    "TRAIN_SUBSETS": "schema",
    "sample_id": "schema",
    "ReleaseError": "release",
    "scan_release": "release",
    "load_instructpart": "load",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
