"""InstructPart's metrics: gIoU, cIoU, P@50, P@50:95 of binary part masks.

The core (`core.py`, `tables.py`) is pure numpy; `instructpart_metric.py` wraps it as an `evaluate` module
(`instructpart_metric.load()` from any folder, or `evaluate.load("ORG/instructpart")` for the published Space);
`score_predictions` (`predictions.py`) scores a folder of predicted PNGs against the benchmark, for
`python -m instructpart_metric score` and `... report` (the HTML report, `report.py`). `published_results()` is
the paper's published table (`paper.py`, package data), and every results file says where its numbers came from
(`results.py`, `provenance.py`). Definitions and conventions: README.md here.

`import instructpart_metric` loads the core only: the names that need `datasets` are imported on first use.
"""

import os

from instructpart_dataset.toolbox.extras import lazy_exports

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
    "paper_row": "paper",
    "prediction_path": "predictions",
    "published_results": "paper",
    "rank_against_published": "paper",
    "read_mask_png": "predictions",
    "read_prediction": "predictions",
    "save_prediction": "predictions",
    "score_predictions": "predictions",
    "write_report": "report",
}


def evaluate_module_path() -> str:
    """The folder of this installed package's `evaluate` module: `evaluate.load(evaluate_module_path())` works from
    any working folder (`evaluate.load("instructpart_metric")` finds it only in a folder holding a copy of it)."""
    return os.path.dirname(os.path.abspath(__file__))


def load(**kwargs):
    """The `evaluate` module of this installed package, from any working folder: `evaluate.load` of the
    package's own folder (offline; keyword arguments such as `cache_dir`, `num_process`, `process_id` and
    `experiment_id` go to `evaluate.load`)."""
    import evaluate

    return evaluate.load(evaluate_module_path(), **kwargs)


__all__ = [
    "METRIC_KEYS",
    "PRECISION_NUMERATORS",
    "StreamingScorer",
    "as_mask",
    "evaluate_module_path",
    "format_table",
    "load",
    "mask_counts",
    "metrics_from_counts",
    "results_dict",
    "sample_iou",
    *_LAZY,
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
