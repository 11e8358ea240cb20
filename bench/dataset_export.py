"""Export and iteration speed of instructpart_dataset, as ratios to floors measured in the same run.

    python bench/dataset_export.py [--data-dir RELEASE] [--repeats 5]

Defaults to $INSTRUCTPART_SAMPLE_DIR (the real 60-entry sample), else a generated release.
Figures (median of --repeats runs):
  export      `export_release` (trps + orps Parquet + card; default threads, and 1 thread)
              / decoding each JPEG and PNG once with PIL in one thread
  iterate     every trps row's mask as a numpy bool array (`load_instructpart`, exported folder)
              / decoding each row's release PNG once with PIL into an array
  iterate-1b  the same iteration / decoding the stored 1-bit PNG bytes of each row (the strict floor)
"""

import argparse
import io
import os
import shutil
import tempfile

import numpy as np
from PIL import Image
from timing import median_time  # bench/timing.py, beside this script

# The figures are this script's output: no progress bars of the runs being timed in front of them
# (tqdm reads TQDM_DISABLE when it is imported; datasets' bars are switched off below).
os.environ.setdefault("TQDM_DISABLE", "1")

from instructpart_dataset import load_instructpart, scan_release
from instructpart_dataset.export import export_release
from instructpart_dataset.synthetic import make_release


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("INSTRUCTPART_SAMPLE_DIR"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import datasets

    datasets.disable_progress_bars()
    workdir = tempfile.mkdtemp(prefix="bench-dataset-")
    os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(workdir, "cache"))
    try:
        release = args.data_dir or make_release(
            os.path.join(workdir, "release"), seed=0, num_train=60, num_test=60, size_range=(800, 2001)
        )
        samples = [s for split in scan_release(release).splits.values() for s in split]

        def decode_all():
            for sample in samples:
                Image.open(sample.image_file).load()
                np.asarray(Image.open(sample.mask_file))

        counter = iter(range(10**6))

        def export(workers=None):
            export_release(release, os.path.join(workdir, f"export-{next(counter)}"), num_workers=workers)

        floor = median_time(decode_all, args.repeats)
        export_time = median_time(export, args.repeats)
        export_one_thread = median_time(lambda: export(1), args.repeats)
        exported = os.path.join(workdir, "export-0")

        rows = load_instructpart(exported, "trps", "test").select_columns(["id", "mask"])
        stored = rows.with_format(None).cast_column("mask", rows.features["mask"].__class__(decode=False))
        stored_bytes = [m["bytes"] for m in stored["mask"]]
        test_masks = {s.id: s.mask_file for s in samples if s.split == "test"}
        row_pngs = [test_masks[sid] for sid in rows["id"]]

        def iterate():
            for row in rows:
                assert row["mask"].dtype == np.bool_

        def decode_release_pngs():
            for path in row_pngs:
                np.asarray(Image.open(path))

        def decode_stored_pngs():
            for data in stored_bytes:
                np.asarray(Image.open(io.BytesIO(data)))

        iterate_time = median_time(iterate, args.repeats)
        png_floor = median_time(decode_release_pngs, args.repeats)
        strict_floor = median_time(decode_stored_pngs, args.repeats)
        print(f"data: {release} ({len(samples)} entries, {len(rows)} trps test rows)")
        print(
            f"export     {export_time:8.3f}s  floor (decode each JPEG+PNG once) {floor:8.3f}s  "
            f"ratio {export_time / floor:5.2f}x  (1 thread: {export_one_thread:.3f}s, "
            f"{export_one_thread / floor:.2f}x)"
        )
        print(
            f"iterate    {iterate_time:8.3f}s  floor (decode each row's release PNG) {png_floor:8.3f}s  "
            f"ratio {iterate_time / png_floor:5.2f}x"
        )
        print(
            f"iterate-1b {iterate_time:8.3f}s  floor (decode each row's stored 1-bit PNG) {strict_floor:8.3f}s  "
            f"ratio {iterate_time / strict_floor:5.2f}x"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
