"""The whole pipeline in one command: data, training, predictions, scores and the report.

    python -m pisa_model.demo [--out out/demo]                        # built-in demo: offline, minutes on a CPU
    python -m pisa_model.demo --data-dir RELEASE [--model CKPT ...]   # the same on the real release

Built-in demo (no `--data-dir`):
  1. generates a small release in the official layout from `--seed` (instructpart_dataset.synthetic);
  2. exports it as a Hub dataset folder and loads TRPS and ORPS from that folder;
  3. trains a tiny random PISA on the train split under Accelerate (`pisa_model.train`);
  4. predicts the test split with it and with the `full-image` and `centre-ellipse` baselines;
  5. scores them and writes the report (paper-style tables, reasoning gap, charts, example overlays).

With `--data-dir` (a release folder or an exported Hub folder), steps 1-3 are skipped: the baselines and
each `--model [NAME=]SPEC` (a PISA checkpoint folder or any `pisa_model.adapters` spec, shown as NAME or as
the folder's name) are scored on `--split`.
`--model` without `--data-dir` scores those models on the generated release instead of training one.

Layout of `--out`:
    release/  hub/  model/                        generated data, its export, the trained tiny PISA
    predictions/<model>/<instruction_type>/<id>.png
    results/<model>.json                          the evaluate command's results layout, TRPS and ORPS together
    report/report.html  report/report.json        the report (one self-contained page) and its numbers
"""

import argparse
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field

from instructpart_dataset.schema import CONFIGS
from instructpart_dataset.toolbox.cli_errors import check_writable, report_error, run_command
from instructpart_dataset.toolbox.files import write_json_atomic

PROG = "python -m pisa_model.demo"
MARKER = ".instructpart-demo"  # marks a folder this command wrote, so that a rerun may replace it
BASELINES = ("full-image", "centre-ellipse")
TINY_PISA = "tiny PISA"
# Mean relative mask area (mask pixels / image pixels) of the 60 entries of the real test sample, measured
# (0.0934): a reasonable centre-ellipse area for a release without a train split.
REAL_TEST_MEAN_AREA = 0.09


@dataclass
class DemoSettings:
    """The built-in demo's size. The defaults take about a minute of CPU time on one thread (51-56 s measured;
    1,200 training steps took 88 s), and the tiny PISA still scores about 70 gIoU against the baselines' 15.
    `python -m pisa_model.demo` prints the wall time it took."""

    seed: int = 0
    num_train: int = 120  # annotated parts; x6 instruction rows
    num_test: int = 24
    image_size: tuple = (96, 161)  # side range of the generated images
    max_steps: int = 600
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 100
    eval_batch_size: int = 16


@dataclass
class DemoResult:
    out: str
    report: str  # report.html
    models: dict = field(default_factory=dict)  # model name -> predictions folder
    summaries: dict = field(default_factory=dict)  # model name -> report.json's numbers
    seconds: dict = field(default_factory=dict)  # step -> wall seconds
    provenance: dict | None = None  # the report's: the scored data (its fingerprints say whether ranks apply)


def slug(name: str) -> str:
    """A folder name for a model name or spec."""
    folder = os.path.expanduser(name)
    base = os.path.basename(os.path.abspath(folder)) if os.path.isdir(folder) else name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "model"


def model_name_and_spec(item: str) -> tuple:
    """`NAME=SPEC` -> (NAME, SPEC); a bare SPEC is named after its folder or spec string."""
    name, sep, spec = item.partition("=")
    if sep and name.strip() and spec.strip():
        return name.strip(), spec.strip()
    return slug(item), item


def _prepare_out(out: str) -> None:
    """Create `out`, or clear what a previous demo wrote there; never touch a folder the demo did not make."""
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(os.path.join(out, MARKER)):
            raise ValueError(f"{out}: exists and was not written by the demo; choose another --out or empty it")
        for name in ("release", "hub", "model", "predictions", "results", "report"):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    elif os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out}: exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("written by python -m pisa_model.demo; a rerun replaces this folder's contents\n")


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _generate(out: str, settings: DemoSettings) -> str:
    from instructpart_dataset.export import export_release
    from instructpart_dataset.synthetic import make_release

    _step(
        f"1/5 generating a release (seed {settings.seed}: {settings.num_train} train, {settings.num_test} test parts)"
    )
    release = make_release(
        os.path.join(out, "release"),
        seed=settings.seed,
        num_train=settings.num_train,
        num_test=settings.num_test,
        size_range=settings.image_size,
    )
    _step("2/5 exporting it as a Hub dataset folder")
    hub = os.path.join(out, "hub")
    export_release(release, hub)
    return hub


def _train(data_dir: str, out: str, settings: DemoSettings) -> str:
    from .train import train

    _step(f"3/5 training a tiny PISA for {settings.max_steps} steps under Accelerate")
    return train(
        [
            "--data-dir",
            data_dir,
            "--output-dir",
            os.path.join(out, "model"),
            "--init-from",
            "tiny",
            "--config",
            ",".join(CONFIGS),
            "--split",
            "train",
            "--max-steps",
            str(settings.max_steps),
            "--batch-size",
            str(settings.batch_size),
            "--grad-accum",
            "1",
            "--lr",
            str(settings.lr),
            "--warmup-steps",
            str(settings.warmup_steps),
            "--log-steps",
            str(max(1, settings.max_steps // 10)),
            "--seed",
            str(settings.seed),
            # off a terminal the bar is a line of carriage returns in the log (losses: model/metrics.jsonl)
            *([] if sys.stderr.isatty() else ["--no-progress"]),
        ]
    )


def _mark_synthetic_training(model_dir: str, seed: int) -> None:
    """The trained model's record of its training data says that it was generated (its model card reads it)."""
    from .train import TRAINING_DATA_FILE

    path = os.path.join(model_dir, TRAINING_DATA_FILE)
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    record["synthetic"] = f"generated by instructpart_dataset.synthetic (seed {seed}): coloured shapes, not photos"
    write_json_atomic(path, record)


def _centre_ellipse(data_dir: str, area: float | None):
    """The centre-ellipse adapter, or None (with a note) when DATA has no train split to take its area from."""
    from .adapters import load_adapter

    if area is not None:
        return load_adapter("centre-ellipse", relative_area=area)
    try:
        return load_adapter("centre-ellipse", data_dir=data_dir)
    except ValueError:
        print(
            f"note: centre-ellipse skipped: {data_dir} has no readable train split to take its area from; pass "
            f"--centre-ellipse-area {REAL_TEST_MEAN_AREA} (the mean part area of 60 real test images)",
            file=sys.stderr,
        )
        return None


def _evaluate(models: dict, datasets: list, out: str, batch_size: int, data: dict) -> dict:
    """Predict and score every dataset with every model: {name: merged StreamingScorer}; each model's
    results file (the evaluate command's layout and provenance) goes to results/<model>.json."""
    from instructpart_metric.paper import DEFAULT_ORPS_FORM
    from instructpart_metric.provenance import command_line, model_identity, provenance
    from instructpart_metric.results import build_results

    from .adapters import load_adapter
    from .evaluate import evaluate_model

    scorers = {}
    for name, spec in models.items():
        adapter = load_adapter(spec)
        folder = os.path.join(out, "predictions", slug(name))
        merged = None
        for config, dataset in zip(CONFIGS, datasets):
            label = f"predicting {config.upper()} with {name}" if sys.stderr.isatty() else False
            scorer, _ = evaluate_model(adapter, dataset, batch_size=batch_size, prediction_dir=folder, progress=label)
            merged = scorer if merged is None else merged.merge(scorer)
        scorers[name] = merged
        results = build_results(
            merged,
            tuple(CONFIGS),
            orps_form=DEFAULT_ORPS_FORM,
            provenance=provenance(
                command_line(PROG),
                DEFAULT_ORPS_FORM,
                data,
                model=model_identity(spec if isinstance(spec, str) else adapter.name, adapter.name),
                predictions=folder,
            ),
        )
        path = os.path.join(out, "results", f"{slug(name)}.json")
        write_json_atomic(path, results)
    return scorers


def run_demo(
    out: str = os.path.join("out", "demo"),
    *,
    data_dir: str | None = None,
    models=(),
    split: str = "test",
    settings: DemoSettings | None = None,
    centre_ellipse_area: float | None = None,
) -> DemoResult:
    """Run the demo (see the module docstring) into `out`; returns where everything went and the numbers."""
    from instructpart_dataset import load_instructpart
    from instructpart_metric import report
    from instructpart_metric.paper import DEFAULT_ORPS_FORM
    from instructpart_metric.provenance import command_line, dataset_identity, provenance

    settings = settings or DemoSettings()
    if data_dir is not None and not os.path.exists(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir}: no such folder")
    named, given = {}, {}
    for item in models:
        name, spec = model_name_and_spec(item)
        if name in named:
            raise ValueError(
                f"--model {given[name]!r} and --model {item!r} are both named {name!r}; name one: --model NAME=SPEC"
            )
        named[name], given[name] = spec, item
    # A model the user names like a built-in baseline replaces it (`--model full-image` is just that baseline).
    baselines = [name for name in BASELINES if name not in named]
    folders = {}
    for name in [*baselines, *named]:
        if slug(name) in folders:
            raise ValueError(
                f"models {folders[slug(name)]!r} and {name!r} would share the folder {slug(name)!r}; "
                "name one: --model NAME=SPEC"
            )
        folders[slug(name)] = name
    out = os.path.abspath(out)
    _prepare_out(out)
    result = DemoResult(out=out, report="")
    started = time.perf_counter()

    built_in = data_dir is None
    if built_in:
        data_dir = _generate(out, settings)
        split = "test"
    result.seconds["data"] = time.perf_counter() - started

    evaluated = {name: name for name in baselines}  # name -> adapter spec (or adapter)
    if built_in and not models:
        clock = time.perf_counter()
        evaluated[TINY_PISA] = _train(data_dir, out, settings)
        _mark_synthetic_training(evaluated[TINY_PISA], settings.seed)
        result.seconds["train"] = time.perf_counter() - clock
    evaluated.update(named)
    for name, spec in list(evaluated.items()):
        if spec == "centre-ellipse":  # its area comes from DATA's train split or --centre-ellipse-area
            ellipse = _centre_ellipse(data_dir, centre_ellipse_area)
            if ellipse is None:
                del evaluated[name]
            else:
                evaluated[name] = ellipse

    clock = time.perf_counter()
    _step(f"4/5 predicting the {split} split with {', '.join(evaluated)}")
    by_config = {config: load_instructpart(data_dir, config=config, split=split) for config in CONFIGS}
    datasets = list(by_config.values())
    data = dataset_identity(data_dir, split, by_config)
    if built_in:  # generated shapes: never ranked against the paper's methods (paper.why_not_ranked)
        data["synthetic"] = True
    scorers = _evaluate(evaluated, datasets, out, settings.eval_batch_size, data)
    result.seconds["predict"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _step("5/5 scoring and writing the report")
    result.models = {name: os.path.join(out, "predictions", slug(name)) for name in evaluated}
    source = f"built-in demo (seed {settings.seed})" if built_in else os.path.abspath(data_dir)
    result.report = report.write_report(
        os.path.join(out, "report"),
        scorers,
        result.models,
        datasets,
        title="InstructPart · demo" if built_in else "InstructPart results",
        subtitle=f"{source} · {split} split",
        provenance=provenance(command_line(PROG), DEFAULT_ORPS_FORM, data),
    )
    with open(os.path.join(out, "report", "report.json")) as f:
        numbers = json.load(f)
    result.summaries = numbers["models"]
    result.provenance = numbers.get("provenance")
    result.seconds["report"] = time.perf_counter() - clock
    result.seconds["total"] = time.perf_counter() - started
    return result


def build_parser() -> argparse.ArgumentParser:
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="InstructPart end to end: data, (training,) predictions, scores and an HTML report.",
    )
    parser.add_argument("--out", default=os.path.join("out", "demo"), help="output folder (default: out/demo)")
    parser.add_argument("--data-dir", help="a release or exported Hub folder: skip generation and training")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="M",
        help="[NAME=]SPEC: a PISA checkpoint folder or adapter spec to score (repeatable); replaces training",
    )
    parser.add_argument("--split", default="test", help="split scored with --data-dir (default: test)")
    parser.add_argument("--centre-ellipse-area", type=float, help="centre-ellipse area when DATA has no train split")
    demo = parser.add_argument_group("built-in demo size")
    demo.add_argument("--seed", type=int, default=defaults.seed)
    demo.add_argument("--num-train", type=int, default=defaults.num_train, help="generated train parts")
    demo.add_argument("--num-test", type=int, default=defaults.num_test, help="generated test parts")
    demo.add_argument("--max-steps", type=int, default=defaults.max_steps, help="training steps")
    demo.add_argument("--batch-size", type=int, default=defaults.batch_size, help="training batch size")
    demo.add_argument("--lr", type=float, default=defaults.lr, help="training learning rate")
    demo.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="learning-rate warmup steps")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    settings = DemoSettings(
        seed=args.seed,
        num_train=args.num_train,
        num_test=args.num_test,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
    )
    for name in ("num_train", "num_test", "max_steps", "batch_size", "warmup_steps"):
        lowest = 0 if name == "warmup_steps" else 1
        if getattr(settings, name) < lowest:
            error = ValueError(f"--{name.replace('_', '-')} must be at least {lowest}, got {getattr(settings, name)}")
            return report_error(PROG, error)
    if args.data_dir is None:
        # Tiny models on a few CPU cores run far faster on one thread than on several.
        import torch

        torch.set_num_threads(1)

    def demo():
        check_writable(args.out, folder=True)
        result = run_demo(
            args.out,
            data_dir=args.data_dir,
            models=args.model,
            split=args.split,
            settings=settings,
            centre_ellipse_area=args.centre_ellipse_area,
        )
        from instructpart_metric.report import console_paper_table, console_tables

        print()
        print(console_tables(result.summaries))
        print()
        print(console_paper_table(result.summaries, provenance=result.provenance))
        print(f"\ndone in {result.seconds['total']:.0f} s; report: {result.report}")

    return run_command(PROG, demo)


if __name__ == "__main__":
    sys.exit(main())
