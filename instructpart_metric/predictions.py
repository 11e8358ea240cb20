"""Prediction folders: their layout, reading and writing their masks, and scoring one against the benchmark.

    from instructpart_metric import score_predictions
    scored = score_predictions("out/predictions/PISA", "path/to/release", config="trps", split="test")
    scored.scorer.compute(by="instruction_type")

A predictions folder holds `<folder>/<instruction_type>/<id>.png`: single-channel PNGs at the size of
the ground-truth mask, non-zero = foreground. The score command, the report and `pisa_model.evaluate`
(which writes such folders) all go through here.

Each entry's ground truth is decoded once for all its instruction variants, and entries can be
decoded and counted in worker processes (PNG decoding is the cost), so only integer counts travel
back to the main process.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from instructpart_dataset.schema import SCORE_LABELS, sample_key
from instructpart_dataset.toolbox.files import write_atomic

from .core import StreamingScorer, array_counts, read_mask_png


def prediction_path(folder: str, instruction_type: str, sample: str) -> str:
    """Where a prediction lies: `<folder>/<instruction_type>/<id>.png`."""
    return os.path.join(folder, instruction_type, f"{sample}.png")


def save_prediction(folder: str, row: dict, mask: np.ndarray) -> str:
    """Write the mask of a dataset row as a mode "1" PNG at `prediction_path`; return the path."""
    path = prediction_path(folder, row["instruction_type"], row["id"])
    image = Image.fromarray(np.asarray(mask, dtype=bool))
    write_atomic(path, lambda temporary: image.save(temporary, format="PNG"))
    return path


def _size_error(path: str, shape: tuple, reference: tuple, sample: str) -> ValueError:
    (h, w), (rh, rw) = shape, reference
    return ValueError(f"{path}: prediction size {w}x{h} differs from the ground-truth mask size {rw}x{rh} of {sample}")


def read_prediction(folder: str, instruction_type: str, sample: str, shape: tuple | None = None) -> np.ndarray:
    """The prediction of one sample as a bool (H, W) mask, checked against the ground truth's `shape`."""
    path = prediction_path(folder, instruction_type, sample)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such prediction file")
    mask = read_mask_png(path, path) != 0
    if shape is not None and mask.shape != tuple(shape):
        raise _size_error(path, mask.shape, tuple(shape), sample)
    return mask


@dataclass
class EntryTask:
    """One ground-truth mask and the prediction files of its dataset rows (None = missing, scored as empty)."""

    sample_id: str
    reference: object  # PNG bytes, or a path
    predictions: list = field(default_factory=list)  # [(row index, path or None)]


def score_entry(task: EntryTask) -> list:
    """`[(row index, intersection, union)]` for every prediction of one entry (runs in a worker)."""
    reference = read_mask_png(task.reference, f"ground-truth mask of {task.sample_id}")
    results = []
    for row, path in task.predictions:
        if path is None:
            results.append((row, 0, int(np.count_nonzero(reference))))
            continue
        prediction = read_mask_png(path, path)
        if prediction.shape != reference.shape:
            raise _size_error(path, prediction.shape, reference.shape, task.sample_id)
        results.append((row, *array_counts(prediction, reference)))
    return results


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _columns(datasets_: list) -> dict:
    """The scored columns of every row as Python lists, ground-truth masks left encoded (decoded in the workers)."""
    import datasets

    columns = {name: [] for name in ("id", "mask", *SCORE_LABELS)}
    for dataset in datasets_:
        missing = [name for name in columns if name not in dataset.column_names]
        if missing:
            raise ValueError(f"the dataset lacks column(s) {', '.join(missing)}")
        dataset = dataset.with_format(None).select_columns(list(columns))
        part = dataset.cast_column("mask", datasets.Image(decode=False))[:]
        for name in columns:
            columns[name].extend(part[name])
    return columns


def _tasks(rows: dict, folder: str) -> tuple:
    """Entry tasks (one per ground-truth mask) and the list of missing prediction files."""
    tasks, by_entry, missing = [], {}, []
    for row, (sample, kind, mask) in enumerate(zip(rows["id"], rows["instruction_type"], rows["mask"])):
        reference = mask["bytes"] if mask.get("bytes") is not None else mask.get("path")
        if reference is None:
            raise ValueError(f"sample {sample}: the dataset row has no mask")
        task = by_entry.get(sample)
        if task is None or task.reference != reference:
            task = by_entry[sample] = EntryTask(sample, reference)
            tasks.append(task)
        path = prediction_path(folder, kind, sample)
        if not os.path.isfile(path):
            missing.append(path)
            path = None
        task.predictions.append((row, path))
    return tasks, missing


def _run(tasks: list, pool: ProcessPoolExecutor | None, desc: str, progress: bool) -> list:
    from tqdm.auto import tqdm

    counts = []
    with tqdm(total=len(tasks), desc=desc, unit="entry", disable=None if progress else True) as bar:
        results = pool.map(score_entry, tasks, chunksize=4) if pool else map(score_entry, tasks)
        for result in results:
            counts.extend(result)
            bar.update()
    return counts


class MissingPredictionError(FileNotFoundError):
    """Prediction files absent from a folder (`paths`), refused without `missing_as_empty`."""

    def __init__(self, message: str, paths: list):
        super().__init__(message)
        self.paths = paths


@dataclass
class FolderScore:
    """What `score_predictions` returns."""

    scorer: StreamingScorer  # one sample per dataset row, in data order: labels SCORE_LABELS, key `<type>/<id>`
    entries: int  # distinct ground-truth masks
    missing: list  # prediction files that were absent and scored as empty masks


def score_predictions(
    predictions: str,
    data,
    *,
    config: str = "trps",
    split: str = "test",
    missing_as_empty: bool = False,
    num_workers: int = 1,
    cache_dir: str | None = None,
    progress: bool = True,
) -> FolderScore:
    """Score the predictions folder `predictions` against every row of `data`.

    Args:
        predictions (`str`): a folder of `<instruction_type>/<id>.png` (see `prediction_path`).
        data: a release folder, an exported Hub folder or repo id (loaded with `load_instructpart(data,
            config, split)`), or `load_instructpart` datasets (one, or a list, e.g. one per config).
        missing_as_empty (`bool`): score an absent prediction file as an empty mask instead of refusing.
        num_workers (`int`): processes decoding the PNGs; 1 decodes in this process.

    Raises:
        FileNotFoundError: the folder, or (without `missing_as_empty`) a prediction file, is missing.
        ValueError: an unreadable or wrongly sized mask, naming its file; an empty dataset.
    """
    if not os.path.isdir(predictions):
        raise FileNotFoundError(f"{predictions}: no such predictions folder")
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    pool = None
    if num_workers > 1:
        # Started first so that the workers' start-up overlaps loading the dataset.
        pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
        for _ in range(num_workers):
            pool.submit(int)
    try:
        if isinstance(data, (str, os.PathLike)):
            from instructpart_dataset import load_instructpart

            source = f"the {config} {split} split of {data}"
            data = load_instructpart(os.fspath(data), config, split, cache_dir=cache_dir)
        else:
            source = "the dataset"
        rows = _columns(data if isinstance(data, (list, tuple)) else [data])
        if not rows["id"]:
            raise ValueError(f"{source} has no rows")
        tasks, missing = _tasks(rows, predictions)
        if missing and not missing_as_empty:
            more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
            raise MissingPredictionError(f"{missing[0]}: no such prediction file{more}", missing)
        desc = f"scoring {os.path.basename(os.path.normpath(predictions))}"
        counts = _run(tasks, pool, desc, progress)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    scorer = StreamingScorer()
    for row, intersection, union in sorted(counts):
        labels = {name: rows[name][row] for name in SCORE_LABELS}
        scorer.add_counts(
            intersection, union, labels=labels, key=sample_key(labels["instruction_type"], rows["id"][row])
        )
    return FolderScore(scorer, len(tasks), missing)
