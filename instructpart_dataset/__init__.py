"""The InstructPart benchmark as `datasets` datasets: a release-folder builder, a script-free Hub export."""

from .load import load_instructpart
from .release import ReleaseError, scan_release
from .schema import CONFIGS, FEATURES, INSTRUCTION_TYPES, SPLITS, TRAIN_SUBSETS, sample_id

__all__ = [
    "CONFIGS",
    "FEATURES",
    "INSTRUCTION_TYPES",
    "ReleaseError",
    "SPLITS",
    "TRAIN_SUBSETS",
    "load_instructpart",
    "sample_id",
    "scan_release",
]
