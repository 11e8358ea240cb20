"""Score any model on InstructPart, on one process or many (`accelerate launch`), with the benchmark's metric.

    python -m pisa_model.evaluate --model MODEL --data-dir RELEASE --config trps,orps --split test \\
        [--output-dir OUT] [--save-predictions] [--compare-published] [--orps-form question|name] \\
        [--overwrite] [--batch-size 8] [--by object ...] [--limit N] [--dtype bfloat16] [--adapter-arg NAME=VALUE ...]
    accelerate launch -m pisa_model.evaluate --model MODEL ...          # the same, sharded over processes

MODEL is a PISA checkpoint folder, an adapter spec (the list: `--help`, from
`pisa_model.adapters.ADAPTER_SPECS`), or your own model, `path/to/file.py:FACTORY` or `package.module:FACTORY`
(`pisa_model.adapters.registry`). `centre-ellipse` takes its area from the train split of the same `--data-dir`.

Each process takes a contiguous slice of the rows with no padding (every row is scored exactly once,
whatever the number of processes), predicts in batches and scores each row into a `StreamingScorer`
(labels instruction_type, object, part, affordance, action; key `<instruction_type>/<id>`). The scorers'
states (counts, not masks) are gathered, so the numbers equal a single-process run's. The main process
prints the tables (per task, then the paper's layout; with `--compare-published` among the published
methods) and writes `OUT/results.json` (`instructpart_metric.results` layout, with provenance; refused if
an earlier run's is there, unless `--overwrite`); with `--save-predictions`, every process
writes `OUT/predictions/<instruction_type>/<id>.png` (mode "1", non-zero = foreground: the layout
`python -m instructpart_metric score` and the report read), and the main process writes the adapter's
per-sample extras to `OUT/predictions/<name>.jsonl` (reason-then-ground: `phrases.jsonl`; PISA with
`--adapter-arg generate=true` and vlm-box: `answers.jsonl`, written with or without `--save-predictions`). An
adapter's rows that failed (an API VLM's, after their retries) stop the run with exit status 1 naming how many,
writing no results.json and removing this run's predictions/, unless `--adapter-arg allow_failures=true`. Rows are read and
decoded by `--num-workers` threads ahead of the model and PNGs are written from threads, so a fast model does not
wait on JPEG decoding.

In-process (several models on one dataset):

    from pisa_model.evaluate import evaluate_model
    scorer, extras = evaluate_model("clipseg:CIDAS/clipseg-rd64-refined", dataset, batch_size=8)
"""

import argparse
import json
import os
import re
import shutil
import sys
import time

import numpy as np

from instructpart_dataset.schema import LABEL_COLUMNS, SCORE_LABELS, row_key, row_labels
from instructpart_dataset.toolbox.cli_errors import OperationFailed, check_writable, run_command, writing
from instructpart_dataset.toolbox.files import write_text_atomic
from instructpart_metric import StreamingScorer
from instructpart_metric.cli import add_run_arguments
from instructpart_metric.predictions import save_prediction
from instructpart_metric.provenance import command_line, dataset_identity, format_provenance, model_identity, provenance
from instructpart_metric.results import (
    RESULTS_FILE,
    build_results,
    check_not_overwriting,
    format_results,
    parse_configs,
    write_results,
)

from .adapters import load_adapter, parse_option
from .adapters.registry import specs_help

PROG = "python -m pisa_model.evaluate"
VLM_EXAMPLES = """

Box-drawing VLMs, local or through any OpenAI-compatible endpoint (API: one request per row, cached on disk; the key
from $OPENAI_API_KEY or --adapter-arg api_key_env=NAME; options concurrency, max_retries, timeout, longest_side,
max_tokens, temperature, cache_dir, allow_failures):
  --model vlm-box:Qwen/Qwen2.5-VL-7B-Instruct,facebook/sam-vit-huge
  --model vlm-box:api:gpt-4o@https://api.openai.com/v1,facebook/sam-vit-huge --adapter-arg concurrency=8
A row that fails after its retries stops the run (exit 1, naming how many) unless allow_failures=true."""


def _row_batches(dataset, indices: list, batch_size: int, num_workers: int):
    """Batches of rows in order; with workers, reading and decoding the next batches (JPEG images, PNG masks) runs
    in `num_workers` threads while the model predicts on this one.

    Threads, not DataLoader processes: PIL decodes with the GIL released, so threads decode in parallel, and a
    decoded row stays where it is. A worker process has to ship each decoded image back (measured on the real
    sample: 58 ms per 2000x1500 row into shared memory, then 28 ms in the main process to rebuild the PIL image,
    against 97 ms to read and decode the row), which gives back to the main process much of what it was to save.
    """
    starts = range(0, len(indices), batch_size)

    if num_workers == 0:
        for start in starts:
            yield [dataset[i] for i in indices[start : start + batch_size]]
        return

    def read(start):
        rows = [dataset[i] for i in indices[start : start + batch_size]]
        for row in rows:  # datasets opens images lazily: decode them here, not when the model first reads them
            if hasattr(row["image"], "load"):
                row["image"].load()
        return rows

    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="read-rows") as pool:
        pending = deque()
        for start in starts:
            pending.append(pool.submit(read, start))
            if len(pending) > 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _PredictionWriter:
    """Writes prediction PNGs from a thread pool (zlib and file writes release the GIL), keeping at most `backlog`
    masks in flight; `close()` waits for every file and re-raises the first error."""

    def __init__(self, prediction_dir: str | None, threads: int, backlog: int = 64):
        self.prediction_dir, self.backlog, self.pending = prediction_dir, backlog, []
        self.pool = None
        if prediction_dir is not None and threads > 0:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="save-prediction")

    def write(self, row: dict, mask) -> None:
        if self.prediction_dir is None:
            return
        where = {"instruction_type": row["instruction_type"], "id": row["id"]}
        if self.pool is None:
            save_prediction(self.prediction_dir, where, mask)
            return
        self.pending.append(self.pool.submit(save_prediction, self.prediction_dir, where, mask))
        if len(self.pending) > self.backlog:
            self.pending.pop(0).result()

    def close(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pending = []
            if self.pool is not None:
                self.pool.shutdown(wait=True)


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
    progress: bool | str = True,
    num_workers: int = 2,
    write_threads: int = 2,
    extras_dir: str | None = None,
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
        progress (`bool` or `str`): a tqdm bar on the main process; a string is its label (default: the
            adapter's name).
        num_workers (`int`): threads that read and decode the next batches' rows while the model predicts (0: in
            the loop, between batches).
        write_threads (`int`): threads that write the prediction PNGs (0: in the loop).
        extras_dir (`str`, *optional*): where the adapter's extras go (`<extras_name>.jsonl`, e.g. PISA's generated
            `answers.jsonl`); defaults to `prediction_dir`.

    Returns:
        `(scorer, extras)`: the `StreamingScorer` of all rows (data order), and a dict with `model` (the
        adapter's name), `records` (one dict per row: id, instruction_type, instruction, object, part and
        the adapter's per-sample extras; empty when it has none), `summary` (the adapter's scores of its
        extras, e.g. reason-then-ground's `reasoning`), `seconds` and `rows_per_second` (prediction wall
        time on the slowest process), `answer_mode` (PISA's "teacher-forced" or "generated"; None for other
        adapters).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    missing = [c for c in ("id", "image", "mask", "instruction", *SCORE_LABELS) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the dataset lacks column(s) {', '.join(missing)}")
    if prediction_dir is not None:
        check_writable(prediction_dir, folder=True)
    if device is None and accelerator is not None:
        device = accelerator.device
    adapter = load_adapter(model, device=device, dtype=dtype, **(adapter_options or {}))
    main = accelerator is None or accelerator.is_main_process

    if num_workers < 0 or write_threads < 0:
        raise ValueError(f"num_workers and write_threads must be >= 0, got {num_workers} and {write_threads}")
    indices = _shard(accelerator, len(dataset))
    scorer, records = StreamingScorer(), []
    started = time.perf_counter()
    batches = _row_batches(dataset, indices, batch_size, num_workers)
    total = -(-len(indices) // batch_size)
    writer = _PredictionWriter(prediction_dir, write_threads)
    label = progress if isinstance(progress, str) else f"evaluate {adapter.name}"
    try:
        _predict_and_score(adapter, batches, total, scorer, records, writer, label, bool(progress) and main)
    finally:
        writer.close()
    seconds = time.perf_counter() - started

    states = _gather(accelerator, [scorer.state_dict()])
    merged = StreamingScorer()
    for state in states:
        merged.merge(state)
    records = _gather(accelerator, records)
    seconds = max(_gather(accelerator, [seconds]))
    summary = adapter.summarize_extras(records) if records else {}
    usage = _summed(_gather(accelerator, [adapter_usage(adapter)]))
    failed = [record for record in records if record.get("failed")]
    if failed and not getattr(adapter, "allow_failures", False):
        raise OperationFailed(failed_rows_message(adapter.name, failed, len(merged)))
    extras_dir = extras_dir if extras_dir is not None else prediction_dir
    if extras_dir is not None and records and main:
        _write_jsonl(os.path.join(extras_dir, f"{adapter.extras_name}.jsonl"), records)
    extras = {
        "model": adapter.name,
        "records": records,
        "summary": summary,
        "seconds": seconds,
        "rows_per_second": len(merged) / seconds if seconds > 0 else float("inf"),
        "answer_mode": getattr(adapter, "answer_mode", None),
        "record": adapter_record(adapter, usage),
        "failed": [row_key(record) for record in failed],
    }
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return merged, extras


def adapter_record(adapter, usage: dict) -> dict:
    """What provenance keeps of an adapter's own settings (`record()`: prompts and their sha256, the VLM, ...)
    and of what its run used (`usage`, summed over processes: requests, cache hits and misses, tokens)."""
    record = dict(adapter.record()) if hasattr(adapter, "record") else {}
    if usage:
        record["usage"] = usage
    return record


def adapter_usage(adapter) -> dict:
    return dict(adapter.usage()) if hasattr(adapter, "usage") else {}


def _summed(counts: list) -> dict:
    total = {}
    for part in counts:
        for name, value in part.items():
            total[name] = total.get(name, 0) + value
    return total


def failed_rows_message(model: str, failed: list, rows: int) -> str:
    """One line naming how many rows failed, the first few with their reasons, and what to do."""
    shown = "; ".join(f"{row_key(r)}: {r['failed']}" for r in failed[:3]) + ("; ..." if len(failed) > 3 else "")
    return (
        f"{model}: {len(failed)} of {rows} rows failed ({shown}); no results written. The answered rows are "
        "cached: run again to ask only for these, or add --adapter-arg allow_failures=true to score them as "
        "empty masks"
    )


def _predict_and_score(adapter, batches, total, scorer, records, writer, label, progress) -> None:
    from tqdm.auto import tqdm

    with_types = getattr(adapter, "takes_instruction_types", False)
    for rows in tqdm(batches, total=total, desc=label, unit="batch", disable=not progress):
        images, instructions = [r["image"] for r in rows], [r["instruction"] for r in rows]
        if with_types:  # its prompts differ per task form
            kinds = [r["instruction_type"] for r in rows]
            masks, extras = adapter.predict_with_extras(images, instructions, instruction_types=kinds)
        else:
            masks, extras = adapter.predict_with_extras(images, instructions)
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
            writer.write(row, mask)
            if extras is not None:
                info = {name: row[name] for name in ("id", "instruction_type", "instruction", "object", "part")}
                records.append({**info, **extras[position]})


def _slug(model: str) -> str:
    name = model.rstrip("/")
    if os.path.isdir(os.path.expanduser(name)):
        name = os.path.basename(os.path.abspath(os.path.expanduser(name)))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score a model on InstructPart (gIoU, cIoU, P@50:95, P@50).",
        epilog="MODEL specs (CKPT: a local folder or a Hub repo id):\n" + specs_help() + VLM_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="PISA checkpoint folder, adapter spec (NAME[:CHECKPOINT]), or your own model: "
        "path/to/file.py:FACTORY or package.module:FACTORY",
    )
    parser.add_argument("--data-dir", required=True, help="release folder, exported dataset folder or Hub repo id")
    add_run_arguments(parser)  # --config trps,orps, --orps-form, --compare-published, --overwrite
    parser.add_argument("--split", default="test")
    parser.add_argument("--output-dir", help="where results.json (and predictions/) go; default out/evaluate/<model>")
    parser.add_argument("--save-predictions", action="store_true", help="write predictions/<type>/<id>.png")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per predict call, per process")
    parser.add_argument("--by", nargs="+", default=[], choices=LABEL_COLUMNS, help="extra per-label breakdowns")
    parser.add_argument("--limit", type=int, help="score only the first N rows of each config (after the split)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype (default: float32)")
    parser.add_argument(
        "--adapter-arg", action="append", default=[], metavar="NAME=VALUE", help="adapter option; repeatable"
    )
    parser.add_argument(
        "--num-workers", type=int, default=2, help="threads decoding images and masks ahead of the model (0: none)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded as the command line
    return args


def run(args) -> dict:
    """The command's work, for `main` (and tests): returns what results.json holds (on the main process)."""
    import datasets
    from accelerate import Accelerator

    from instructpart_dataset import load_instructpart

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    configs = parse_configs(args.config)
    options = dict(parse_option(item) for item in args.adapter_arg)
    if args.model.strip() == "centre-ellipse" and not {"relative_area", "train_masks"} & set(options):
        options.setdefault("data_dir", args.data_dir)
    output_dir = args.output_dir or os.path.join("out", "evaluate", _slug(args.model))
    prediction_dir = os.path.join(output_dir, "predictions") if args.save_predictions else None
    # Checked before the data, the model and hours of predictions, not after them.
    check_writable(output_dir, folder=True)
    check_writable(os.path.join(output_dir, RESULTS_FILE))
    check_not_overwriting(os.path.join(output_dir, RESULTS_FILE), args.overwrite)
    if prediction_dir is not None:
        check_writable(prediction_dir, folder=True)
        check_not_overwriting(prediction_dir, args.overwrite)

    accelerator = Accelerator()
    if prediction_dir is not None and accelerator.is_main_process:
        shutil.rmtree(prediction_dir, ignore_errors=True)  # --overwrite: no file of the earlier run stays
    # Every process reads the dataset; the first prepares datasets' cache while the others wait.
    by_config = {}
    with accelerator.main_process_first():
        for config in configs:
            dataset = load_instructpart(args.data_dir, config=config, split=args.split)
            if args.limit is not None:
                dataset = dataset.select(range(min(args.limit, len(dataset))))
            if len(dataset) == 0:
                raise ValueError(f"{args.data_dir}: no {config} rows in the {args.split} split")
            by_config[config] = dataset
    rows = datasets.concatenate_datasets(list(by_config.values())) if len(configs) > 1 else by_config[configs[0]]
    try:
        scorer, extras = evaluate_model(
            args.model,
            rows,
            batch_size=args.batch_size,
            accelerator=accelerator,
            prediction_dir=prediction_dir,
            dtype=args.dtype,
            adapter_options=options,
            progress=not args.no_progress,
            num_workers=args.num_workers,
            extras_dir=os.path.join(output_dir, "predictions"),  # e.g. PISA's generated answers.jsonl
        )
    except OperationFailed:
        if prediction_dir is not None and accelerator.is_main_process:
            shutil.rmtree(prediction_dir, ignore_errors=True)  # this run's masks, half of them empty: not kept
        raise
    results = {}
    if accelerator.is_main_process:
        results = evaluation_results(scorer, configs, by_config, args, extras, accelerator.num_processes)
        processes = accelerator.num_processes
        print(f"{extras['model']} on {','.join(configs)} {args.split} ({len(scorer)} rows, {processes} process(es))")
        print(
            format_results(
                results, extras["model"], breakdowns=tuple(args.by), compare_published=args.compare_published
            )
        )
        for line in run_summary_lines(results):
            print(line)
        if "reasoning" in results:
            reasoning = results["reasoning"]["all"]
            print(
                "\nreasoning step (exact match): "
                + ", ".join(
                    f"{name} {100 * reasoning[name]:.2f}%" for name in ("parsed", "part", "object", "part_and_object")
                )
            )
        path = os.path.join(output_dir, RESULTS_FILE)
        with writing(path):
            write_results(path, results, args.overwrite)
        print(f"wrote {path}")
    accelerator.wait_for_everyone()
    return results


def evaluation_results(scorer, configs: tuple, by_config: dict, args, extras: dict, processes: int) -> dict:
    """results.json of a run (`instructpart_metric.results` layout): numbers, provenance, then execution."""
    results = build_results(
        scorer,
        configs,
        orps_form=args.orps_form,
        breakdowns=tuple(args.by),
        compare_published=args.compare_published,
        extra=extras["summary"],
        provenance=provenance(
            command_line(PROG, getattr(args, "argv", None)),
            args.orps_form,
            dataset_identity(args.data_dir, args.split, by_config),
            model=model_identity(args.model, extras["model"]),
            dtype=args.dtype or "float32",
            # How PISA's answer was produced changes its numbers, so it belongs with the model, not the timing.
            **({"answer_mode": extras["answer_mode"]} if extras.get("answer_mode") else {}),
            # The adapter's prompts (with their sha256), its VLM's settings and what the run used (API requests,
            # cache hits, tokens): two runs with different prompts never carry the same provenance.
            **({"adapter": extras["record"]} if extras.get("record") else {}),
            **({"failures": _failures(extras["failed"])} if extras.get("failed") else {}),
        ),
    )
    results["execution"] = {
        "processes": processes,
        "seconds": round(extras["seconds"], 3),
        "rows_per_second": round(extras["rows_per_second"], 3),
    }
    return results


def _failures(keys: list) -> dict:
    return {"rows": len(keys), "scored_as": "empty masks (allow_failures=true)", "keys": list(keys)}


def run_summary_lines(results: dict) -> list:
    """What the console says about boxes, failed rows and API usage, after the tables."""
    lines = []
    boxes = (results.get("boxes") or {}).get("all")
    if boxes:
        lines.append(
            f"\nboxes: {boxes['boxed']} of {boxes['rows']} rows boxed, {boxes['abstained']} abstained "
            f"(empty masks), {boxes['failed']} failed"
        )
    failures = (results.get("provenance") or {}).get("failures")
    if failures:
        lines.append(f"{failures['rows']} rows failed and are scored as empty masks (allow_failures=true)")
    lines += [
        line for line in format_provenance(results.get("provenance") or {}) if line.startswith(("prompts", "api"))
    ]
    return lines


def main(argv=None) -> int:
    args = _parse_args(argv)
    return run_command(PROG, run, args)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["evaluate_model", "main"]
