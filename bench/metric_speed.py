"""Speed of instructpart_metric, as ratios to floors measured in the same run (median of --repeats).

    python bench/metric_speed.py [--pairs 600] [--distinct 64] [--repeats 5] [--cli-repeats 3] [--no-cli]

Mask pairs have real-world sizes (like the release: long side 2000 px for most images, else
1024; short side 50-100% of it) and a spread of overlaps (shifted, grown, shrunk, empty,
full-image predictions). To bound memory, the --pairs samples cycle through --distinct different
pairs (64 pairs are ~350 MB, far beyond the CPU caches, so every pass reads main memory).

  core        StreamingScorer.add per pair + compute
              / floor: one np.count_nonzero pass over every prediction and every truth
  naive       np.logical_and/np.logical_or + count_nonzero per pair (for reference)  / same floor
  evaluate-per-sample   evaluate.load(<checkout>/instructpart_metric): add_batch once per pair (as an
              eval loop calls it) + compute  / same floor
  evaluate-batched      the same module: add_batch of 50 pairs at a time + compute  / same floor
  cli         `python -m instructpart_metric score` end to end (a fresh interpreter, datasets
              import, the prepared split from its cache, decoding, counting) on a generated release
              of --pairs/2 entries scored with trps (--pairs prediction PNGs, mode L 0/255)
              / floor: decoding every prediction PNG and every release mask PNG once with PIL
              (Image.open + load) in one process
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

from instructpart_metric import StreamingScorer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def median_times(functions: dict, repeats: int) -> dict:
    """Median seconds of each function over `repeats` rounds; each round runs every function once,
    so that load from other processes on the machine hits floor and figures alike."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def random_size(rng):
    long_side = 2000 if rng.random() < 0.9 else 1024
    short_side = int(long_side * rng.uniform(0.5, 1.0))
    return (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)


def draw_shape(size, box, shape):
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "ellipse":
        draw.ellipse(box, fill=1)
    else:
        x0, y0, x1, y1 = box
        draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, (y0 + y1) // 2), (x1, y1)], fill=1)
    return np.asarray(canvas, dtype=bool)


def make_pair(rng):
    """(prediction, truth) bool masks of one random real-world size with a random kind of overlap."""
    width, height = random_size(rng)
    w, h = int(width * rng.uniform(0.05, 0.6)), int(height * rng.uniform(0.05, 0.6))
    x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    shape = "ellipse" if rng.random() < 0.5 else "polygon"
    truth = draw_shape((width, height), (x0, y0, x0 + w, y0 + h), shape)
    kind = rng.choice(["shifted", "scaled", "other", "empty", "full"], p=[0.5, 0.25, 0.15, 0.06, 0.04])
    if kind == "empty":
        prediction = np.zeros_like(truth)
    elif kind == "full":
        prediction = np.ones_like(truth)
    elif kind == "other":
        px, py = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        prediction = draw_shape((width, height), (px, py, px + w, py + h), shape)
    else:
        scale = rng.uniform(0.6, 1.4) if kind == "scaled" else 1.0
        dx, dy = (rng.normal(0, 0.15, size=2) * (w, h)).astype(int)
        pw, ph = int(w * scale), int(h * scale)
        prediction = draw_shape((width, height), (x0 + dx, y0 + dy, x0 + dx + pw, y0 + dy + ph), shape)
    return prediction, truth


def write_release(folder, pairs, entries):
    """A release test split (official layout) of `entries` entries; masks from `pairs`, flat images."""
    os.makedirs(os.path.join(folder, "test", "images"))
    os.makedirs(os.path.join(folder, "test", "masks"))
    records, truths = [], []
    for index in range(entries):
        truth = pairs[index % len(pairs)][1]
        stem = f"bench{index:05d}_{index:06x}_o"
        sample_id = f"{stem}-kettle-handle"
        height, width = truth.shape
        Image.new("RGB", (width, height), (120, 120, 120)).save(
            os.path.join(folder, "test", "images", sample_id + ".jpg"), quality=50
        )
        Image.fromarray(truth.astype(np.uint8), "L").save(os.path.join(folder, "test", "masks", sample_id + ".png"))
        records.append(
            {
                "image_path": stem + ".jpg",
                "part_list": [
                    {
                        "object": "kettle",
                        "part": "handle",
                        "affordance": "hold",
                        "action": "pour",
                        "instruction": [
                            "If I want to pour water, which part of the kettle should I use?",
                            "Which part of the kettle lets you pour water?",
                            "Where is the handle of the kettle in this image?",
                            "Where is the handle of the kettle that can be held in this image?",
                            "handle of the kettle",
                            "handle of the kettle that can be held",
                        ],
                    }
                ],
            }
        )
        truths.append(sample_id)
    with open(os.path.join(folder, "test", "data_test.json"), "w") as f:
        json.dump(records, f)
    return truths


def write_predictions(folder, pairs, sample_ids):
    """Mode-L 0/255 PNGs: each entry's own prediction for human, its mirror image for gpt4."""
    paths = []
    for kind in ("human", "gpt4"):
        os.makedirs(os.path.join(folder, kind))
        for index, sample_id in enumerate(sample_ids):
            prediction = pairs[index % len(pairs)][0]
            if kind == "gpt4":
                prediction = prediction[:, ::-1]
            path = os.path.join(folder, kind, sample_id + ".png")
            Image.fromarray(prediction.astype(np.uint8) * 255, "L").save(path)
            paths.append(path)
    return paths


def report(name, seconds, floor_seconds, floor_name):
    print(f"{name:<20} {seconds / floor_seconds:6.2f}x {floor_name}   ({seconds:.3f} s vs {floor_seconds:.3f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--distinct", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cli-repeats", type=int, default=3)
    parser.add_argument("--no-cli", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    pool = [make_pair(rng) for _ in range(min(args.distinct, args.pairs))]
    samples = [pool[index % len(pool)] for index in range(args.pairs)]
    pixels = sum(truth.size for _, truth in samples)
    print(f"{args.pairs} mask pairs ({len(pool)} distinct), {pixels / len(samples) / 1e6:.2f} Mpx per mask on average")

    def floor():
        for prediction, truth in samples:
            np.count_nonzero(prediction)
            np.count_nonzero(truth)

    def core():
        scorer = StreamingScorer()
        for prediction, truth in samples:
            scorer.add(prediction, truth)
        return scorer.compute()

    def naive():
        for prediction, truth in samples:
            np.count_nonzero(np.logical_and(prediction, truth))
            np.count_nonzero(np.logical_or(prediction, truth))

    import evaluate

    workdir = tempfile.mkdtemp(prefix="bench-metric-")
    try:
        metric = evaluate.load(os.path.join(ROOT, "instructpart_metric"), cache_dir=os.path.join(workdir, "evaluate"))

        def evaluate_per_sample():
            for prediction, truth in samples:
                metric.add_batch(predictions=[prediction], references=[truth])
            return metric.compute()

        def evaluate_batched():
            for start in range(0, len(samples), 50):
                batch = samples[start : start + 50]
                metric.add_batch(predictions=[p for p, _ in batch], references=[t for _, t in batch])
            return metric.compute()

        expected = {**core(), "num_samples": len(samples)}
        assert evaluate_per_sample() == expected and evaluate_batched() == expected
        functions = {
            "floor": floor,
            "core": core,
            "naive": naive,
            "evaluate-per-sample": evaluate_per_sample,
            "evaluate-batched": evaluate_batched,
        }
        times = median_times(functions, args.repeats)
        for name in list(functions)[1:]:
            report(name, times[name], times["floor"], "count_nonzero floor")
        if not args.no_cli:
            run_cli(args, pool, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_cli(args, pool, workdir):
    release = os.path.join(workdir, "release")
    predictions = os.path.join(workdir, "predictions")
    sample_ids = write_release(release, pool, args.pairs // 2)
    prediction_paths = write_predictions(predictions, pool, sample_ids)
    mask_paths = [os.path.join(release, "test", "masks", sample_id + ".png") for sample_id in sample_ids]
    env = {**os.environ, "HF_DATASETS_CACHE": os.path.join(workdir, "cache"), "HF_HUB_OFFLINE": "1"}

    def cli(workers=None, json_path=None):
        command = [
            sys.executable,
            "-m",
            "instructpart_metric",
            "score",
            "--predictions",
            predictions,
            "--data-dir",
            release,
            "--config",
            "trps",
            "--split",
            "test",
        ]
        if workers:
            command += ["--num-workers", str(workers)]
        if json_path:
            command += ["--json", json_path]
        subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)

    def decode_floor():
        for path in prediction_paths + mask_paths:
            with Image.open(path) as image:
                image.load()

    # The first run prepares the split's Arrow cache, as any first run does; its numbers must
    # equal the core's on the same pairs.
    cli(json_path=os.path.join(workdir, "cli.json"))
    with open(os.path.join(workdir, "cli.json")) as f:
        cli_overall = json.load(f)["configs"]["trps"]["all"]
    scorer = StreamingScorer()
    for flip in (False, True):
        for index in range(len(sample_ids)):
            prediction, truth = pool[index % len(pool)]
            scorer.add(prediction[:, ::-1] if flip else prediction, truth)
    assert cli_overall == {**scorer.compute(), "num_samples": len(scorer)}, (cli_overall, scorer.compute())
    print(f"cli: {len(prediction_paths)} prediction PNGs, {len(mask_paths)} release masks")
    times = median_times({"floor": decode_floor, "cli": cli, "cli-1": lambda: cli(1)}, args.cli_repeats)
    report("cli", times["cli"], times["floor"], "PNG-decode floor")
    report("cli-1", times["cli-1"], times["floor"], "PNG-decode floor (--num-workers 1)")


if __name__ == "__main__":
    main()
