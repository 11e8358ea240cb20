"""Score any model on InstructPart, on one process or many (`accelerate launch`), with the benchmark's metric.

    python -m pisa_model.evaluate --model MODEL --data-dir RELEASE --config trps --split test \\
        [--output-dir OUT] [--save-predictions] [--batch-size 8] [--by object ...] [--limit N] \\
        [--dtype bfloat16] [--adapter-arg NAME=VALUE ...]
    accelerate launch -m pisa_model.evaluate --model MODEL ...          # the same, sharded over processes

MODEL is a PISA checkpoint folder or an adapter spec (the list: `--help`, from
`pisa_model.adapters.ADAPTER_SPECS`). `centre-ellipse` takes its area from the train split of the same `--data-dir`.

Each process takes a contiguous slice of the rows with no padding (every row is scored exactly once,
whatever the number of processes), predicts in batches and scores each row into a `StreamingScorer`
(labels instruction_type, object, part, affordance, action; key `<instruction_type>/<id>`). The scorers'
states (counts, not masks) are gathered, so the numbers equal a single-process run's. The main process
prints the paper-style table and writes `OUT/results.json`; with `--save-predictions`, every process
writes `OUT/predictions/<instruction_type>/<id>.png` (mode "1", non-zero = foreground: the layout
`python -m instructpart_metric score` and the report read), and the main process writes the adapter's
per-sample extras to `OUT/predictions/<name>.jsonl` (reason-then-ground: `phrases.jsonl`).

In-process (several models on one dataset):

    from pisa_model.evaluate import evaluate_model
    scorer, extras = evaluate_model("clipseg:CIDAS/clipseg-rd64-refined", dataset, batch_size=8)
"""

import argparse
import json
import os
import re
import sys
import time

import numpy as np

from instructpart_dataset.files import write_json_atomic, write_text_atomic
from instructpart_dataset.schema import CONFIGS, DEFAULT_CONFIG, LABEL_COLUMNS, SCORE_LABELS, row_key, row_labels
from instructpart_metric import StreamingScorer, format_table, results_dict
from instructpart_metric.predictions import save_prediction

from .adapters import load_adapter, parse_option
from .adapters.registry import specs_help


def _write_jsonl(path: str, records: list) -> None:
    write_text_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def _shard(accelerator, count: int) -> list:
    """This process's contiguous slice of range(count), uneven rather than padded."""
    if accelerator is None or accelerator.num_processes == 1:
        return list(range(count))
    with accelerator.split_between_processes(list(range(count)), apply_padding=False) as indices:
        return list(indices)


def _gather(accelerator, items: list) -> list:
    if accelerator is None or accelerator.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(list(items))


def evaluate_model(
    model,
    dataset,
    *,
    batch_size: int = 8,
    accelerator=None,
    prediction_dir: str | None = None,
    device=None,
    dtype=None,
    adapter_options: dict | None = None,
    progress: bool = True,
) -> tuple:
    """Predict and score every row of `dataset` (`load_instructpart` rows) with `model`.

    Args:
        model (`Adapter` or `str`): an adapter, or a spec for `load_adapter`.
        dataset (`datasets.Dataset`): rows with id, image, mask, instruction and the label columns.
        batch_size (`int`): rows per `predict` call, per process.
        accelerator (`accelerate.Accelerator`, *optional*): shard the rows over its processes (no padding)
            and gather the scores; every process returns the same merged scorer. None: this process alone.
        prediction_dir (`str`, *optional*): write `<instruction_type>/<id>.png` masks and the extras there.
        device, dtype: where a model given by spec is loaded (default: the accelerator's device, else CPU).
        adapter_options (`dict`, *optional*): options for `load_adapter` when `model` is a spec.
        progress (`bool`): a tqdm bar on the main process.

    Returns:
        `(scorer, extras)`: the `StreamingScorer` of all rows (data order), and a dict with `model` (the
        adapter's name), `records` (one dict per row: id, instruction_type, instruction, object, part and
        the adapter's per-sample extras; empty when it has none), `summary` (the adapter's scores of its
        extras, e.g. reason-then-ground's `reasoning`), `seconds` and `rows_per_second` (prediction wall
        time on the slowest process).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    missing = [c for c in ("id", "image", "mask", "instruction", *SCORE_LABELS) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the dataset lacks column(s) {', '.join(missing)}")
    if device is None and accelerator is not None:
        device = accelerator.device
    adapter = load_adapter(model, device=device, dtype=dtype, **(adapter_options or {}))
    main = accelerator is None or accelerator.is_main_process

    indices = _shard(accelerator, len(dataset))
    scorer, records = StreamingScorer(), []
    started = time.perf_counter()
    batches = range(0, len(indices), batch_size)
    for start in tqdm(batches, desc=f"evaluate {adapter.name}", unit="batch", disable=not (progress and main)):
        rows = [dataset[i] for i in indices[start : start + batch_size]]
        masks, extras = adapter.predict_with_extras([r["image"] for r in rows], [r["instruction"] for r in rows])
        if len(masks) != len(rows) or (extras is not None and len(extras) != len(rows)):
            raise ValueError(f"{adapter.name} returned {len(masks)} masks for {len(rows)} rows")
        for position, (row, mask) in enumerate(zip(rows, masks)):
            key = row_key(row)
            reference = np.asarray(row["mask"], dtype=bool)
            if np.shape(mask) != reference.shape:
                raise ValueError(
                    f"sample {key}: {adapter.name} predicted a {np.shape(mask)} mask for a {reference.shape} image"
                )
            scorer.add(mask, reference, labels=row_labels(row), key=key)
            if prediction_dir is not None:
                save_prediction(prediction_dir, row, mask)
            if extras is not None:
                info = {name: row[name] for name in ("id", "instruction_type", "instruction", "object", "part")}
                records.append({**info, **extras[position]})
    seconds = time.perf_counter() - started

    states = _gather(accelerator, [scorer.state_dict()])
    merged = StreamingScorer()
    for state in states:
        merged.merge(state)
    records = _gather(accelerator, records)
    seconds = max(_gather(accelerator, [seconds]))
    summary = adapter.summarize_extras(records) if records else {}
    if prediction_dir is not None and records and main:
        _write_jsonl(os.path.join(prediction_dir, f"{adapter.extras_name}.jsonl"), records)
    extras = {
        "model": adapter.name,
        "records": records,
        "summary": summary,
        "seconds": seconds,
        "rows_per_second": len(merged) / seconds if seconds > 0 else float("inf"),
    }
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return merged, extras


def _slug(model: str) -> str:
    name = model.rstrip("/")
    if os.path.isdir(os.path.expanduser(name)):
        name = os.path.basename(os.path.abspath(os.path.expanduser(name)))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m pisa_model.evaluate",
        description="Score a model on InstructPart (gIoU, cIoU, P@50:95, P@50).",
        epilog="MODEL specs (CKPT: a local folder or a Hub repo id):\n" + specs_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="PISA checkpoint folder or adapter spec (NAME[:CHECKPOINT])")
    parser.add_argument("--data-dir", required=True, help="release folder, exported dataset folder or Hub repo id")
    parser.add_argument("--config", default=DEFAULT_CONFIG, choices=CONFIGS)
    parser.add_argument("--split", default="test")
    parser.add_argument("--output-dir", help="where results.json (and predictions/) go; default out/evaluate/<model>")
    parser.add_argument("--save-predictions", action="store_true", help="write predictions/<type>/<id>.png")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per predict call, per process")
    parser.add_argument("--by", nargs="+", default=[], choices=LABEL_COLUMNS, help="extra per-label breakdowns")
    parser.add_argument("--limit", type=int, help="score only the first N rows (after config and split)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype (default: float32)")
    parser.add_argument(
        "--adapter-arg", action="append", default=[], metavar="NAME=VALUE", help="adapter option; repeatable"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _table(results: dict) -> str:
    rows = dict(results["by"]["instruction_type"])
    rows["overall"] = results["overall"]
    return format_table(rows, row_header="instruction_type")


def run(args) -> dict:
    """The command's work, for `main` (and tests): returns what results.json holds (on the main process)."""
    from accelerate import Accelerator

    from instructpart_dataset import load_instructpart

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    options = dict(parse_option(item) for item in args.adapter_arg)
    if args.model.strip() == "centre-ellipse" and not {"relative_area", "train_masks"} & set(options):
        options.setdefault("data_dir", args.data_dir)
    output_dir = args.output_dir or os.path.join("out", "evaluate", _slug(args.model))

    accelerator = Accelerator()
    # Every process reads the dataset; the first prepares datasets' cache while the others wait.
    with accelerator.main_process_first():
        dataset = load_instructpart(args.data_dir, config=args.config, split=args.split)
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{args.data_dir}: no {args.config} rows in the {args.split} split")
    scorer, extras = evaluate_model(
        args.model,
        dataset,
        batch_size=args.batch_size,
        accelerator=accelerator,
        prediction_dir=os.path.join(output_dir, "predictions") if args.save_predictions else None,
        dtype=args.dtype,
        adapter_options=options,
        progress=not args.no_progress,
    )
    results = results_dict(scorer, rows_by="instruction_type")
    for label in args.by:
        results["by"].update(results_dict(scorer, rows_by=None, breakdown=label)["by"])
    results.update(extras["summary"])
    results["run"] = {
        "model": extras["model"],
        "data_dir": args.data_dir,
        "config": args.config,
        "split": args.split,
        "limit": args.limit,
        "processes": accelerator.num_processes,
        "batch_size": args.batch_size,
        "dtype": args.dtype or "float32",
        "seconds": round(extras["seconds"], 3),
        "rows_per_second": round(extras["rows_per_second"], 3),
    }
    if accelerator.is_main_process:
        processes = accelerator.num_processes
        print(f"{extras['model']} on {args.config} {args.split} ({len(scorer)} rows, {processes} process(es))")
        print(_table(results))
        for label in args.by:
            print()
            print(format_table(results["by"][label], row_header=label))
        if "reasoning" in results:
            reasoning = results["reasoning"]["all"]
            print(
                "\nreasoning step (exact match): "
                + ", ".join(
                    f"{name} {100 * reasoning[name]:.2f}%" for name in ("parsed", "part", "object", "part_and_object")
                )
            )
        path = os.path.join(output_dir, "results.json")
        write_json_atomic(path, results)
        print(f"wrote {path}")
    accelerator.wait_for_everyone()
    return results


def main(argv=None) -> int:
    args = _parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"pisa_model.evaluate: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["evaluate_model", "main"]
