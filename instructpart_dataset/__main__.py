"""`python -m instructpart_dataset {export,summary,synthetic}`."""

import argparse
import sys
from collections import Counter

from .release import ReleaseError, scan_release
from .schema import CONFIGS


def _export(args) -> None:
    from .export import export_release

    counts = export_release(args.data_dir, args.output, overwrite=args.overwrite)
    for config, splits in counts.items():
        print(f"{config}: " + ", ".join(f"{split} {rows} rows" for split, rows in splits.items()))
    print(f"wrote {args.output}")


def _summary(args) -> None:
    index = scan_release(args.data_dir)
    for split, samples in index.splits.items():
        rows = ", ".join(f"{config} {len(samples) * len(types)} rows" for config, types in CONFIGS.items())
        objects = Counter(sample.object for sample in samples)
        print(
            f"{split}: {len(samples)} entries ({rows}); {len(objects)} objects, {len({s.part for s in samples})} parts"
        )
        if split == "train":
            subsets = Counter(sample.train_subset for sample in samples)
            running = 0
            for n in sorted(subsets):
                running += subsets[n]
                print(f"  train{n}: {running} entries")
    for message in index.warnings:
        print(f"warning: {message}")


def _synthetic(args) -> None:
    from .synthetic import make_release

    make_release(args.output, seed=args.seed, num_train=args.num_train, num_test=args.num_test)
    print(f"wrote a generated release to {args.output}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructpart_dataset", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a script-free Hub dataset folder (Parquet + card)")
    export.add_argument("--data-dir", required=True, help="local copy of the official release")
    export.add_argument("--output", required=True, help="folder to create")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    export.set_defaults(run=_export)
    summary = commands.add_parser("summary", help="check a release and print its splits")
    summary.add_argument("--data-dir", required=True)
    summary.set_defaults(run=_summary)
    synthetic = commands.add_parser("synthetic", help="generate a small release in the official layout")
    synthetic.add_argument("--output", required=True)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--num-train", type=int, default=18)
    synthetic.add_argument("--num-test", type=int, default=8)
    synthetic.set_defaults(run=_synthetic)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ReleaseError, FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
