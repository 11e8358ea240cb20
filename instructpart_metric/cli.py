"""`python -m instructpart_metric score|report`: score prediction folders against InstructPart.

    python -m instructpart_metric score --predictions PRED --data-dir DATA --config trps --split test \
        [--json OUT] [--by object|part|affordance|action] [--missing-as-empty] [--num-workers N]
    python -m instructpart_metric report --data-dir DATA --predictions NAME=PRED [--predictions ...] --out DIR

PRED holds `PRED/<instruction_type>/<id>.png` (PNG, non-zero = foreground) at the size of the
ground-truth mask; DATA is a release folder or an exported Hub folder (read by
`load_instructpart`). `score` prints the paper-style table (one row per instruction type, columns
gIoU, cIoU, P@50:95, P@50 in percent) and the breakdown asked for; `--json` writes the same numbers.
`report` writes the HTML report of several models (`report.py`). Both score through
`score_predictions` (`predictions.py`).
"""

import argparse
import sys

from instructpart_dataset.schema import CONFIGS, DEFAULT_CONFIG, LABEL_COLUMNS, SPLITS

from .predictions import MissingPredictionError, default_workers, score_predictions
from .tables import format_table, results_dict

PROG = "python -m instructpart_metric"


def score(args: argparse.Namespace) -> int:
    if args.num_workers < 1:
        raise ValueError(f"--num-workers must be at least 1, got {args.num_workers}")
    try:
        scored = score_predictions(
            args.predictions,
            args.data_dir,
            config=args.config,
            split=args.split,
            missing_as_empty=args.missing_as_empty,
            num_workers=args.num_workers,
            cache_dir=args.cache_dir,
        )
    except MissingPredictionError as error:
        raise FileNotFoundError(f"{error}; pass --missing-as-empty to score missing files as empty masks") from None
    scorer, missing = scored.scorer, scored.missing
    results = results_dict(scorer, rows_by="instruction_type", breakdown=args.by)

    print(f"InstructPart {args.config} {args.split}: {len(scorer)} predictions of {scored.entries} entries")
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
        from instructpart_dataset.files import write_json_atomic

        write_json_atomic(args.json, payload)
        print(f"wrote {args.json}")
    return 0


def report(args: argparse.Namespace) -> int:
    from .report import run_report

    path = run_report(args)
    print(f"report written to {path}")
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
    command.add_argument("--config", default=DEFAULT_CONFIG, help=f"one of {', '.join(CONFIGS)}")
    command.add_argument("--split", default="test", help=f"one of {', '.join(SPLITS)}")
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
    from .report import add_report_arguments

    command = commands.add_parser(
        "report",
        help="an HTML report of several models' prediction folders",
        description="Score prediction folders and write report.html and report.json (paper tables, gap, examples).",
    )
    add_report_arguments(command)
    command.set_defaults(handler=report)
    return parser


def main(argv: list | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1
