"""`python -m instructpart_metric score|report`: score prediction folders against InstructPart.

    python -m instructpart_metric score --predictions PRED --data-dir DATA --config trps,orps --split test \
        [--orps-form question|name] [--compare-published] [--json OUT [--overwrite]] \
        [--by object|part|affordance|action] [--missing-as-empty] [--num-workers N]
    python -m instructpart_metric report --data-dir DATA --predictions NAME=PRED [--predictions ...] --out DIR

PRED holds `PRED/<instruction_type>/<id>.png` (PNG, non-zero = foreground) at the size of the
ground-truth mask; DATA is a release folder or an exported Hub folder (read by
`load_instructpart`). `score` prints per task a table (one row per instruction type and the combined
row, columns gIoU, cIoU, P@50:95, P@50 in percent), the breakdown asked for, and the paper's layout
(`paper.py`; among the published methods with `--compare-published`); `--json` writes the results file
of `results.py`, with its provenance.
`report` writes the HTML report of several models (`report.py`). Both score through
`score_predictions` (`predictions.py`).
"""

import argparse
import os
import sys

from instructpart_dataset.schema import CONFIGS, DEFAULT_CONFIG, LABEL_COLUMNS, SPLITS

from .predictions import MissingPredictionError, default_workers, score_predictions

PROG = "python -m instructpart_metric"


def add_run_arguments(parser: argparse.ArgumentParser, default_config: str = DEFAULT_CONFIG) -> None:
    """The options the score, report and evaluate commands share: configs, ORPS form, comparison, overwrite."""

    # A string, checked by results.parse_configs when the command runs (one-line errors, like other inputs).
    parser.add_argument(
        "--config",
        default=default_config,
        metavar="CONFIGS",
        help=f"one or more of {', '.join(CONFIGS)}, comma-separated (e.g. trps,orps; default {default_config})",
    )
    from .paper import add_orps_form_argument

    add_orps_form_argument(parser)
    parser.add_argument(
        "--compare-published", action="store_true", help="print the paper's table with yours inserted and ranked"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the results file of an earlier run")


def score(args: argparse.Namespace) -> int:
    from instructpart_dataset import load_instructpart
    from instructpart_dataset.toolbox.cli_errors import check_writable

    from .provenance import command_line, dataset_identity, provenance
    from .results import build_results, check_not_overwriting, format_results, parse_configs, write_results

    configs = parse_configs(args.config)
    if args.json:  # found before the scoring, not after it
        check_writable(args.json)
    if not os.path.isdir(args.predictions):
        raise FileNotFoundError(f"{args.predictions}: no such predictions folder")
    if args.num_workers < 1:
        raise ValueError(f"--num-workers must be at least 1, got {args.num_workers}")
    if args.json:
        check_not_overwriting(args.json, args.overwrite, what="--json")
    datasets = {
        config: load_instructpart(args.data_dir, config, args.split, cache_dir=args.cache_dir) for config in configs
    }
    try:
        scored = score_predictions(
            args.predictions,
            list(datasets.values()),
            missing_as_empty=args.missing_as_empty,
            num_workers=args.num_workers,
        )
    except MissingPredictionError as error:
        raise FileNotFoundError(f"{error}; pass --missing-as-empty to score missing files as empty masks") from None
    scorer, missing = scored.scorer, scored.missing
    breakdowns = (args.by,) if args.by else ()
    results = build_results(
        scorer,
        configs,
        orps_form=args.orps_form,
        breakdowns=breakdowns,
        compare_published=args.compare_published,
        extra={"missing_as_empty": len(missing)},
        provenance=provenance(
            command_line(PROG, args.argv),
            args.orps_form,
            dataset_identity(args.data_dir, args.split, datasets),
            predictions=args.predictions,
        ),
    )
    print(f"InstructPart {','.join(configs)} {args.split}: {len(scorer)} predictions of {scored.entries} entries")
    # A folder the evaluate command wrote is OUT/predictions: name the row after OUT.
    folder = os.path.normpath(os.path.abspath(args.predictions))
    name = os.path.basename(os.path.dirname(folder) if os.path.basename(folder) == "predictions" else folder)
    print(format_results(results, name, breakdowns=breakdowns, compare_published=args.compare_published))
    if missing:
        print(f"{len(missing)} missing prediction files counted as empty masks")
    if args.json:
        from instructpart_dataset.toolbox.cli_errors import writing

        with writing(args.json):
            write_results(args.json, results, args.overwrite)
        print(f"wrote {args.json}")
    return 0


def report(args: argparse.Namespace) -> int:
    import json

    from .report import console_paper_table, console_tables, run_report

    path = run_report(args, PROG)
    with open(os.path.join(os.path.dirname(path), "report.json"), encoding="utf-8") as f:
        numbers = json.load(f)
    print(console_tables(numbers["models"]))
    print()
    print(console_paper_table(numbers["models"], numbers["orps_form"], numbers.get("provenance")))
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
    add_run_arguments(command)
    # Checked by load_instructpart, the one place that knows the splits.
    command.add_argument("--split", default="test", help=f"one of {', '.join(SPLITS)}")
    command.add_argument("--json", metavar="OUT", help="also write the results file (results.json layout) here")
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
    from .lmms_tasks import add_arguments as add_lmms_arguments
    from .lmms_tasks import run as run_lmms_tasks

    command = commands.add_parser(
        "lmms-eval-tasks",
        help="print the lmms-eval task folder (or write tasks on a local export)",
        description="Print the folder of the InstructPart lmms-eval tasks, for lmms-eval --include_path; with "
        "--data-dir EXPORT --output DIR, write tasks that read a local export into DIR and print DIR.",
    )
    add_lmms_arguments(command)
    command.set_defaults(handler=run_lmms_tasks)
    from .leaderboard import add_arguments as add_leaderboard_arguments
    from .leaderboard import run as run_leaderboard

    command = commands.add_parser(
        "leaderboard",
        help="one table of the published rows, results files and model cards (HTML page and Space app)",
        description="Build the leaderboard: the paper's published rows, results.json files and Hub model cards in the "
        "paper's four column groups; writes DIR/leaderboard.html, DIR/leaderboard.json and DIR/space/app.py.",
    )
    add_leaderboard_arguments(command)
    command.set_defaults(handler=run_leaderboard)
    return parser


def main(argv: list | None = None) -> int:
    from instructpart_dataset.toolbox.cli_errors import run_command

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded as the command line
    return run_command(f"{PROG} {args.command}", args.handler, args)
