"""`python -m instructpart_metric score`: score a folder of predicted masks against InstructPart.

    python -m instructpart_metric score --predictions PRED --data-dir DATA --config trps --split test \
        [--json OUT] [--by object|part|affordance|action] [--missing-as-empty] [--num-workers N]

PRED holds `PRED/<instruction_type>/<id>.png` (PNG, non-zero = foreground) at the size of the
ground-truth mask; DATA is a release folder or an exported Hub folder (read by
`load_instructpart`). Prints the paper-style table (one row per instruction type, columns gIoU,
cIoU, P@50:95, P@50 in percent) and the breakdown asked for; `--json` writes the same numbers.

Each entry's ground truth is decoded once for all its instruction variants, and entries are
decoded and counted in worker processes (PNG decoding is the cost), so only integer counts
travel back to the main process.
"""

import argparse
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from .core import MASK_IMAGE_MODES, StreamingScorer, array_counts
from .tables import format_table, results_dict

LABEL_COLUMNS = ("object", "part", "affordance", "action")
PROG = "python -m instructpart_metric"


@dataclass
class EntryTask:
    """One ground-truth mask and the prediction files of its dataset rows (None = missing, scored as empty)."""

    sample_id: str
    reference: object  # PNG bytes, or a path
    predictions: list = field(default_factory=list)  # [(row index, path or None)]


def _pixels(image: Image.Image) -> np.ndarray:
    """The (H, W) pixel values, viewed in place through Pillow's Arrow export where it can
    (np.asarray copies them, which costs about half as much as decoding the PNG)."""
    try:
        flat = pa.array(image)
    except (ValueError, TypeError, NotImplementedError, pa.ArrowException):  # e.g. rows in several memory blocks
        return np.asarray(image)
    return flat.to_numpy(zero_copy_only=True).reshape(image.height, image.width)


def _unreadable(name: str, error: Exception) -> ValueError:
    return ValueError(f"{name}: unreadable PNG ({type(error).__name__}: {error})")


def read_mask_png(source, name: str) -> np.ndarray:
    """Decode a single-channel PNG (a path or bytes) to a read-only (H, W) array, non-zero = foreground.

    Errors are ValueErrors whose message starts with `name`.
    """
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as error:  # PIL reports unreadable files through several exception types
        raise _unreadable(name, error) from None
    with image:
        if image.format != "PNG":
            raise ValueError(f"{name}: not a PNG file ({image.format})")
        if image.mode not in MASK_IMAGE_MODES:
            raise ValueError(f"{name}: a mode-{image.mode} image; a mask must be single-channel (mode 1, L, P or I)")
        try:
            image.load()
        except Exception as error:
            raise _unreadable(name, error) from None
        return _pixels(image)


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
            (h, w), (rh, rw) = prediction.shape, reference.shape
            raise ValueError(
                f"{path}: prediction size {w}x{h} differs from the ground-truth mask size {rw}x{rh} of {task.sample_id}"
            )
        results.append((row, *array_counts(prediction, reference)))
    return results


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _load_rows(data_dir: str, config: str, split: str, cache_dir: str | None) -> dict:
    """The split's columns as Python lists, ground-truth masks left encoded (decoded in the workers)."""
    import datasets

    from instructpart_dataset import load_instructpart

    dataset = load_instructpart(data_dir, config, split, cache_dir=cache_dir)
    dataset = dataset.with_format(None).select_columns(["id", "instruction_type", "mask", *LABEL_COLUMNS])
    return dataset.cast_column("mask", datasets.Image(decode=False))[:]


def _tasks(rows: dict, prediction_dir: str) -> tuple:
    """Entry tasks (one per ground-truth mask) and the list of missing prediction files."""
    tasks, by_entry, missing = [], {}, []
    for row, (sample_id, kind, mask) in enumerate(zip(rows["id"], rows["instruction_type"], rows["mask"])):
        reference = mask["bytes"] if mask.get("bytes") is not None else mask.get("path")
        if reference is None:
            raise ValueError(f"sample {sample_id}: the dataset row has no mask")
        task = by_entry.get(sample_id)
        if task is None or task.reference != reference:
            task = by_entry[sample_id] = EntryTask(sample_id, reference)
            tasks.append(task)
        path = os.path.join(prediction_dir, kind, f"{sample_id}.png")
        if not os.path.isfile(path):
            missing.append(path)
            path = None
        task.predictions.append((row, path))
    return tasks, missing


def _run(tasks: list, pool: ProcessPoolExecutor | None) -> list:
    from tqdm.auto import tqdm

    counts = []
    with tqdm(total=len(tasks), desc="Scoring", unit="entry", disable=None) as progress:
        results = pool.map(score_entry, tasks, chunksize=4) if pool else map(score_entry, tasks)
        for result in results:
            counts.extend(result)
            progress.update()
    return counts


def score(args: argparse.Namespace) -> int:
    from instructpart_dataset.cli_errors import check_writable

    if args.json:  # found before the scoring, not after it
        check_writable(args.json)
    if not os.path.isdir(args.predictions):
        raise FileNotFoundError(f"{args.predictions}: no such predictions folder")
    if args.num_workers < 1:
        raise ValueError(f"--num-workers must be at least 1, got {args.num_workers}")
    pool = None
    if args.num_workers > 1:
        # Started first so that the workers' start-up overlaps loading the dataset.
        pool = ProcessPoolExecutor(args.num_workers, mp_context=multiprocessing.get_context("spawn"))
        for _ in range(args.num_workers):
            pool.submit(int)
    try:
        rows = _load_rows(args.data_dir, args.config, args.split, args.cache_dir)
        if not rows["id"]:
            raise ValueError(f"{args.data_dir}: the {args.config} {args.split} split has no rows")
        tasks, missing = _tasks(rows, args.predictions)
        if missing and not args.missing_as_empty:
            more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
            raise FileNotFoundError(
                f"{missing[0]}: no such prediction file{more}; pass --missing-as-empty to score missing files "
                "as empty masks"
            )
        counts = _run(tasks, pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    scorer = StreamingScorer()
    for row, intersection, union in sorted(counts):
        labels = {name: rows[name][row] for name in ("instruction_type", *LABEL_COLUMNS)}
        scorer.add_counts(intersection, union, labels=labels, key=f"{labels['instruction_type']}/{rows['id'][row]}")
    results = results_dict(scorer, rows_by="instruction_type", breakdown=args.by)

    print(f"InstructPart {args.config} {args.split}: {len(scorer)} predictions of {len(tasks)} entries")
    print(format_table(results["by"]["instruction_type"], row_header="instruction_type"))
    if args.by:
        print()
        print(format_table(results["by"][args.by], row_header=args.by))
    if missing:
        print(f"{len(missing)} missing prediction files counted as empty masks")
    if args.json:
        payload = {
            "config": args.config,
            "split": args.split,
            "data_dir": args.data_dir,
            "predictions": args.predictions,
            "missing_as_empty": len(missing),
            **results,
        }
        from instructpart_dataset.cli_errors import writing
        from instructpart_dataset.files import write_json_atomic

        with writing(args.json):
            write_json_atomic(args.json, payload)
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="InstructPart metrics: gIoU, cIoU, P@50:95, P@50.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "score",
        help="score PRED/<instruction_type>/<id>.png against a split",
        description="Score predicted masks (PRED/<instruction_type>/<id>.png, non-zero = foreground).",
    )
    command.add_argument("--predictions", required=True, metavar="PRED", help="folder of <instruction_type>/<id>.png")
    command.add_argument("--data-dir", required=True, metavar="DATA", help="release folder or exported Hub folder")
    # Checked by load_instructpart, the one place that knows the configs and splits.
    command.add_argument("--config", default="trps", help="trps (task instructions) or orps (part references)")
    command.add_argument("--split", default="test", help="test, train, train200, train600, train1200 or train1800")
    command.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    command.add_argument("--by", choices=LABEL_COLUMNS, help="add a table broken down by this label")
    command.add_argument(
        "--missing-as-empty", action="store_true", help="score missing prediction files as empty masks"
    )
    command.add_argument(
        "--num-workers", type=int, default=default_workers(), help="decoding processes (default: the usable CPUs)"
    )
    command.add_argument("--cache-dir", help="datasets cache for the prepared split")
    command.set_defaults(handler=score)
    return parser


def main(argv: list | None = None) -> int:
    from instructpart_dataset.cli_errors import run_command

    args = build_parser().parse_args(argv)
    return run_command(f"{PROG} {args.command}", args.handler, args)
