"""Rows/s of `pisa_model.evaluate`'s harness with a model that costs nothing (`full-image`), as ratios to the
JPEG+PNG decode floor measured in the same run.

    python bench/evaluate_harness.py [--data-dir RELEASE] [--config trps] [--repeats 3] [--num-workers 2]

Defaults to $INSTRUCTPART_SAMPLE_DIR (the real 60-entry sample), else a generated release with 800-2000 px images.
Figures (median of --repeats runs, rows of `--config`'s test split):
  floor          decoding each row's release JPEG and PNG once with PIL, in one thread (what a row costs to read)
  inline         `evaluate_model` reading rows in the loop and writing PNGs in the loop (the harness before
                 worker decoding: `num_workers=0, write_threads=0`)
  workers        `evaluate_model` with `--num-workers` row-decoding threads and 2 PNG-writing threads
each without and with prediction PNGs (`--save-predictions`), with `full-image` (which never reads the pixels, so
the lazily opened JPEGs are decoded only by the workers) and with `full-image` reading each image's pixels first
(`image.load()`: what any real model pays, the cheapest model that looks at the image). A ratio above 1 is faster than the floor: the
decoding is spread over cores. On a machine with few free cores the workers cannot beat the floor by much.
"""

import argparse
import collections
import os
import shutil
import tempfile

import numpy as np
from PIL import Image
from timing import median_time  # bench/timing.py, beside this script

from instructpart_dataset import load_instructpart, scan_release
from instructpart_dataset.synthetic import make_release
from pisa_model.adapters.baselines import FullImageAdapter
from pisa_model.evaluate import evaluate_model


class PixelReadingFullImage(FullImageAdapter):
    """`full-image` that reads each image's pixels first, as every real model does."""

    name = "full-image+pixels"

    def predict(self, images, instructions):
        for image in images:
            image.load()
        return super().predict(images, instructions)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("INSTRUCTPART_SAMPLE_DIR"))
    parser.add_argument("--config", default="trps", choices=("trps", "orps"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench-harness-")
    os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(workdir, "cache"))
    try:
        release = args.data_dir or make_release(
            os.path.join(workdir, "release"), seed=0, num_train=0, num_test=60, size_range=(800, 2001)
        )
        dataset = load_instructpart(release, config=args.config, split="test")
        files = {s.id: (s.image_file, s.mask_file) for s in scan_release(release).splits["test"]}
        per_id = collections.Counter(dataset.select_columns(["id"])["id"])
        rows = sum(per_id.values())

        def decode_rows():
            for sample_id, count in per_id.items():
                image_file, mask_file = files[sample_id]
                for _ in range(count):
                    Image.open(image_file).load()
                    np.asarray(Image.open(mask_file))

        def harness(workers, threads, save, adapter):
            folder = os.path.join(workdir, "predictions")
            shutil.rmtree(folder, ignore_errors=True)
            evaluate_model(
                adapter,
                dataset,
                batch_size=8,
                prediction_dir=folder if save else None,
                progress=False,
                num_workers=workers,
                write_threads=threads,
            )

        harness(0, 0, False, FullImageAdapter())  # warm the page cache and datasets' files
        floor = rows / median_time(decode_rows, args.repeats)
        print(f"{rows} {args.config} rows of {release}; {os.cpu_count()} CPUs; median of {args.repeats} runs")
        print(f"floor (decode JPEG+PNG, 1 thread)  {floor:8.1f} rows/s")
        for adapter in (FullImageAdapter(), PixelReadingFullImage()):
            for save in (False, True):
                for label, workers, threads in (("inline", 0, 0), ("workers", args.num_workers, 2)):
                    timed = lambda: harness(workers, threads, save, adapter)  # noqa: B023, E731
                    speed = rows / median_time(timed, args.repeats)
                    name = f"{adapter.name} {label}{' + PNGs' if save else ''}"
                    print(f"{name:<40} {speed:8.1f} rows/s  {speed / floor:5.2f}x the floor")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
