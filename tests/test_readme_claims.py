"""README claims run as a user runs them, each checked another way: `evaluate --dtype bfloat16`, a valid
`--adapter-arg`, and the score CLI's `--by part|affordance|action`."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from test_metric_cli import TRPS, shifted, write_predictions
from test_metric_core import naive_counts, naive_metrics

from instructpart_metric.cli import main as score_main
from pisa_model.evaluate import main as evaluate_main


def release_parts(release_dir, split="test"):
    """{sample id: (bool mask, {object, part, affordance, action})} from the release's json and PNGs directly."""
    folder = os.path.join(release_dir, split)
    with open(os.path.join(folder, f"data_{split}.json")) as f:
        records = json.load(f)
    parts = {}
    for record in records:
        for part in record["part_list"]:
            names = (record["image_path"].rsplit(".", 1)[0], part["object"], part["part"])
            sample_id = "-".join(name.replace(" ", "_") for name in names)
            mask = np.asarray(Image.open(os.path.join(folder, "masks", sample_id + ".png"))) > 0
            labels = {key: part[key] for key in ("object", "part", "affordance", "action")}
            image = os.path.join(folder, "images", sample_id + ".jpg")
            parts[sample_id] = (mask, labels, image, part["instruction"])
    return parts


@pytest.mark.parametrize("label", ["part", "affordance", "action"])
def test_score_by_label_equals_a_naive_grouping_of_the_release(release_dir, tmp_path, capsys, label):
    parts = release_parts(release_dir)
    predictions = {
        (kind, sid): shifted(mask, 2 + k) for sid, (mask, _, _, _) in parts.items() for k, kind in enumerate(TRPS)
    }
    folder = write_predictions(tmp_path / "pred", predictions)
    out = tmp_path / "results.json"
    argv = ["score", "--predictions", folder, "--data-dir", release_dir, "--by", label, "--json", str(out)]
    assert score_main([*argv, "--num-workers", "1"]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())["configs"]["trps"]["by"][label]
    groups = {}
    for (_, sid), prediction in predictions.items():
        groups.setdefault(parts[sid][1][label], []).append(naive_counts(prediction, parts[sid][0]))
    assert set(results) == set(groups) and len(groups) > 1
    for value, counts in groups.items():
        expected = naive_metrics(counts)
        assert results[value]["num_samples"] == len(counts)
        for key in ("cIoU", "P@50:95", "P@50"):
            assert results[value][key] == expected[key], (value, key)
        assert results[value]["gIoU"] == pytest.approx(expected["gIoU"], rel=1e-15)
        assert f"| {value} " in printed  # the breakdown table is printed too


def test_evaluate_adapter_arg_reaches_the_adapter(release_dir, tmp_path):
    out = tmp_path / "eval"
    argv = ["--model", "centre-ellipse", "--adapter-arg", "relative_area=0.25", "--data-dir", release_dir]
    assert evaluate_main([*argv, "--output-dir", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["provenance"]["model"]["name"] == "centre-ellipse(relative_area=0.2500)"
    counts = []
    for mask, _, _, _ in release_parts(release_dir).values():
        height, width = mask.shape
        # the documented ellipse, pixel by pixel: centre inside the ellipse of semi-axes W, H * sqrt(a / pi)
        a, b = width * (0.25 / np.pi) ** 0.5, height * (0.25 / np.pi) ** 0.5
        ellipse = np.array(
            [
                [((x + 0.5 - width / 2) / a) ** 2 + ((y + 0.5 - height / 2) / b) ** 2 <= 1 for x in range(width)]
                for y in range(height)
            ]
        )
        assert abs(ellipse.mean() - 0.25) < 0.02
        counts += [naive_counts(ellipse, mask)] * len(TRPS)
    assert results["configs"]["trps"]["all"]["cIoU"] == naive_metrics(counts)["cIoU"]
    assert results["configs"]["trps"]["all"]["P@50:95"] == naive_metrics(counts)["P@50:95"]


def test_evaluate_dtype_bfloat16_predicts_with_a_bfloat16_model(release_dir, tmp_path):
    from pisa_model import PisaForPartSegmentation
    from pisa_model.tiny import save_tiny_pisa

    checkpoint = str(tmp_path / "tiny-pisa")
    save_tiny_pisa(checkpoint)
    out = tmp_path / "eval"
    argv = ["--model", checkpoint, "--data-dir", release_dir, "--dtype", "bfloat16", "--limit", "4"]
    assert evaluate_main([*argv, "--output-dir", str(out), "--save-predictions", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["provenance"]["dtype"] == "bfloat16" and results["configs"]["trps"]["all"]["num_samples"] == 4

    model = PisaForPartSegmentation.from_pretrained(checkpoint, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    parts = release_parts(release_dir)
    # the first 4 trps rows in the dataset's order: entries in release order, human then gpt4
    order = list(parts)
    rows = [(sid, kind, k) for sid in order for k, kind in enumerate(TRPS)][:4]
    images = [ImageOps.exif_transpose(Image.open(parts[sid][2])).convert("RGB") for sid, _, _ in rows]
    masks = model.predict(images, [parts[sid][3][k] for sid, _, k in rows])
    counts = []
    for (sid, kind, _), mask in zip(rows, masks):
        saved = np.asarray(Image.open(out / "predictions" / kind / f"{sid}.png")) > 0
        assert np.array_equal(saved, mask), (sid, kind)
        counts.append(naive_counts(mask, parts[sid][0]))
    assert results["configs"]["trps"]["all"]["cIoU"] == naive_metrics(counts)["cIoU"]
