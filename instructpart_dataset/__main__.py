"""`python -m instructpart_dataset {export,summary,synthetic}`.

Errors are one line, `<prog>: error: <path>: <what>`; the exit status is 2 for bad input (missing,
corrupt or invalid files, bad arguments, an output that exists) and 1 when an operation failed (writing
the output, another export holding it).
"""

import argparse
import os
import signal
import sys
from collections import Counter

from .schema import CONFIGS
from .toolbox.files import OutputBusyError


def _export(args) -> None:
    from .export import export_release

    counts = export_release(args.data_dir, args.output, overwrite=args.overwrite)
    for config, splits in counts.items():
        print(f"{config}: " + ", ".join(f"{split} {rows} rows" for split, rows in splits.items()))
    print(f"wrote {args.output}")


def _release_splits(path: str) -> tuple:
    """({split: [(id, object, part, train_subset) per entry]}, warnings) of a release folder."""
    from .release import scan_release

    index = scan_release(path)
    splits = {
        split: [(s.id, s.object, s.part, s.train_subset) for s in samples] for split, samples in index.splits.items()
    }
    return splits, index.warnings


def _export_splits(path: str) -> tuple:
    """The same from an exported Hub folder, read from the Parquet columns (no image is decoded)."""
    import pyarrow.parquet as pq

    from .load import check_parquet_files, data_files

    rows = {}
    for config in CONFIGS:
        for split, files in data_files(path, config).items():
            check_parquet_files(path, config, split)
            table = pq.read_table(list(files), columns=["id", "object", "part", "train_subset"])
            rows.setdefault(split, {})[config] = table.to_pylist()
    splits = {}
    for split, by_config in rows.items():
        entries = {}
        for row in by_config[next(iter(by_config))]:
            entries.setdefault(row["id"], (row["id"], row["object"], row["part"], row["train_subset"]))
        splits[split] = list(entries.values())
    return splits, []


def _summary(args) -> None:
    from .load import is_hub_export

    path = args.data_dir
    splits, warnings = (_export_splits if is_hub_export(path) else _release_splits)(path)
    for split, entries in splits.items():
        rows = ", ".join(f"{config} {len(entries) * len(types)} rows" for config, types in CONFIGS.items())
        objects = {entry[1] for entry in entries}
        parts = {entry[2] for entry in entries}
        print(f"{split}: {len(entries)} entries ({rows}); {len(objects)} objects, {len(parts)} parts")
        if split == "train":
            subsets = Counter(entry[3] for entry in entries)
            running = 0
            for n in sorted(subsets):
                running += subsets[n]
                print(f"  train{n}: {running} entries")
    for message in warnings:
        print(f"warning: {message}")


def _synthetic(args) -> None:
    from .synthetic import make_release
    from .toolbox.files import publish_folder

    with publish_folder(args.output) as staging:
        make_release(staging, seed=args.seed, num_train=args.num_train, num_test=args.num_test)
    print(f"wrote a generated release to {args.output}")


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _terminate(signum, frame):
    # SIGTERM unwinds like an exception, so a half-written output is removed before the process ends.
    sys.exit(128 + signum)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructpart_dataset", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a script-free Hub dataset folder (Parquet + card)")
    export.add_argument("--data-dir", required=True, help="local copy of the official release")
    export.add_argument("--output", required=True, help="folder to create")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    export.set_defaults(run=_export)
    summary = commands.add_parser("summary", help="check a release (or an exported folder) and print its splits")
    summary.add_argument("--data-dir", required=True)
    summary.set_defaults(run=_summary)
    synthetic = commands.add_parser("synthetic", help="generate a small release in the official layout")
    synthetic.add_argument("--output", required=True, help="folder to create")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--num-train", type=_count, default=18)
    synthetic.add_argument("--num-test", type=_count, default=8)
    synthetic.set_defaults(run=_synthetic)
    args = parser.parse_args(argv)
    prog = f"{parser.prog} {args.command}"
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args.run(args)
    except OutputBusyError as error:
        return _fail(prog, str(error), 1)
    except OSError as error:
        if error.errno is None:  # raised by this package with its own message (an output that exists)
            return _fail(prog, str(error), 2)
        where = error.filename or getattr(args, "output", None) or args.data_dir
        return _fail(prog, f"{os.path.abspath(where)}: {error.strerror or error}", 1)
    except ValueError as error:  # ReleaseError and every other check of the input
        return _fail(prog, str(error), 2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _fail(prog: str, message: str, status: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
