"""InstructPart's metrics: gIoU, cIoU, P@50, P@50:95 of binary part masks.

The core (`core.py`, `tables.py`) is pure numpy; `instructpart_metric.py` wraps it as an `evaluate` module
(`evaluate.load("path/to/instructpart_metric")`); `score_predictions` (`predictions.py`) scores a folder of
predicted PNGs against the benchmark, for `python -m instructpart_metric score` and `... report` (the HTML
report, `report.py`). Definitions and conventions: README.md here.

`import instructpart_metric` loads the core only: the names that need `datasets` are imported on first use.
"""

from instructpart_dataset.extras import lazy_exports

from .core import (
    METRIC_KEYS,
    PRECISION_NUMERATORS,
    StreamingScorer,
    as_mask,
    mask_counts,
    metrics_from_counts,
    sample_iou,
)
from .tables import format_table, results_dict

_LAZY = {
    "FolderScore": "predictions",
    "prediction_path": "predictions",
    "read_mask_png": "predictions",
    "read_prediction": "predictions",
    "save_prediction": "predictions",
    "score_predictions": "predictions",
    "write_report": "report",
}

__all__ = [
    "METRIC_KEYS",
    "PRECISION_NUMERATORS",
    "StreamingScorer",
    "as_mask",
    "format_table",
    "mask_counts",
    "metrics_from_counts",
    "results_dict",
    "sample_iou",
    *_LAZY,
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
