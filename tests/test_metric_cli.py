"""`python -m instructpart_metric score` on a generated release, against counts taken straight from the
release's mask files by a naive loop; its one-line errors; one run through a fresh interpreter with 2 workers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_metric_core import naive_counts, naive_metrics

from instructpart_metric.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRPS, ORPS = ("human", "gpt4"), ("part_question", "part_affordance_question", "part_name", "part_affordance_name")
PERFECT = {"gIoU": 1.0, "cIoU": 1.0, "P@50:95": 1.0, "P@50": 1.0}


def release_truths(release_dir):
    """{sample id: (bool mask, object)} read from the test split's json and PNGs, not through the package."""
    folder = os.path.join(release_dir, "test")
    with open(os.path.join(folder, "data_test.json")) as f:
        records = json.load(f)
    truths = {}
    for record in records:
        for part in record["part_list"]:
            names = (record["image_path"][:-4], part["object"], part["part"])
            sample_id = "-".join(name.replace(" ", "_") for name in names)
            mask = np.asarray(Image.open(os.path.join(folder, "masks", sample_id + ".png"))) > 0
            truths[sample_id] = (mask, part["object"])
    return truths


def shifted(mask, columns=3):
    out = np.zeros_like(mask)
    out[:, columns:] = mask[:, :-columns]
    return out


def write_predictions(folder, predictions):
    """predictions: {(instruction_type, id): bool mask}, written as mode-L 0/255 PNGs."""
    for (kind, sample_id), mask in predictions.items():
        os.makedirs(os.path.join(folder, kind), exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(os.path.join(folder, kind, sample_id + ".png"))
    return str(folder)


def run(capsys, *args):
    code = main(["score", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err):
    """The one error line (datasets may print progress bars to stderr before it when it prepares a split)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m instructpart_metric score: error: ")
    return lines[0]


def table_row(output, name):
    line = next(line for line in output.splitlines() if line.startswith(f"| {name} "))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_scores_match_a_naive_loop_over_the_release_masks(release_dir, tmp_path, capsys):
    truths = release_truths(release_dir)
    predictions = {}
    for sample_id, (mask, _) in truths.items():
        predictions["human", sample_id] = mask  # perfect
        predictions["gpt4", sample_id] = shifted(mask)  # a near miss
    folder = write_predictions(tmp_path / "pred", predictions)
    out = tmp_path / "results.json"
    code, stdout, _ = run(
        capsys, "--predictions", folder, "--data-dir", release_dir, "--json", out, "--by", "object", "--num-workers", 1
    )
    assert code == 0
    results = json.loads(out.read_text())
    counts = {key: naive_counts(predictions[key], truths[key[1]][0]) for key in predictions}
    gpt4 = naive_metrics([c for (kind, _), c in counts.items() if kind == "gpt4"])
    assert results["configs"]["trps"]["by"]["instruction_type"]["human"] == {**PERFECT, "num_samples": len(truths)}
    for key in ("cIoU", "P@50:95", "P@50"):
        assert results["configs"]["trps"]["by"]["instruction_type"]["gpt4"][key] == gpt4[key]
        assert results["configs"]["trps"]["all"][key] == naive_metrics(list(counts.values()))[key]
    assert results["configs"]["trps"]["by"]["instruction_type"]["gpt4"]["gIoU"] == pytest.approx(
        gpt4["gIoU"], rel=1e-15
    )
    for obj in {obj for _, obj in truths.values()}:
        expected = naive_metrics([c for (_, sample_id), c in counts.items() if truths[sample_id][1] == obj])
        assert results["configs"]["trps"]["by"]["object"][obj]["cIoU"] == expected["cIoU"]
    percentages = [f"{100 * gpt4[key]:.2f}" for key in ("gIoU", "cIoU", "P@50:95", "P@50")]
    assert table_row(stdout, "gpt4") == percentages + [str(len(truths))]
    assert table_row(stdout, "human") == ["100.00"] * 4 + [str(len(truths))]
    assert sorted(os.listdir(tmp_path)) == ["pred", "results.json"]  # no temporary file left behind


def test_an_exported_hub_folder_scores_like_the_release_folder(release_dir, tmp_path, capsys):
    from instructpart_dataset.export import export_release

    truths = release_truths(release_dir)
    predictions = {
        (kind, sid): shifted(mask, 2 + k) for sid, (mask, _) in truths.items() for k, kind in enumerate(TRPS)
    }
    folder = write_predictions(tmp_path / "pred", predictions)
    exported = str(tmp_path / "export")
    export_release(release_dir, exported, num_workers=1)
    results = []
    for data_dir in (release_dir, exported):
        out = tmp_path / f"{len(results)}.json"
        assert run(capsys, "--predictions", folder, "--data-dir", data_dir, "--json", out, "--num-workers", 1)[0] == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["configs"] == results[1]["configs"]
    counts = [naive_counts(predictions[key], truths[key[1]][0]) for key in predictions]
    assert results[1]["configs"]["trps"]["all"]["cIoU"] == naive_metrics(counts)["cIoU"]


def test_missing_predictions_are_an_error_unless_counted_as_empty(release_dir, tmp_path, capsys):
    truths = release_truths(release_dir)
    first = sorted(truths)[0]
    folder = write_predictions(tmp_path / "pred", {("human", first): truths[first][0]})
    arguments = ["--predictions", folder, "--data-dir", release_dir, "--num-workers", 1]
    code, _, err = run(capsys, *arguments, "--json", tmp_path / "r.json")
    assert code == 2
    err = error_line(err)
    missing = sorted(os.path.join(folder, kind, f"{i}.png") for i in truths for kind in TRPS)
    assert f": error: {missing[0]}: no such prediction file" in err
    assert "--missing-as-empty" in err and f"(and {len(missing) - 2} more missing)" in err
    assert not (tmp_path / "r.json").exists()
    code, stdout, _ = run(capsys, *arguments, "--missing-as-empty")
    assert code == 0
    assert f"{2 * len(truths) - 1} missing prediction files counted as empty masks" in stdout
    # human: one perfect sample, the rest empty predictions (IoU 0, the truths are non-empty)
    assert table_row(stdout, "human")[0] == f"{100 / len(truths):.2f}"
    assert table_row(stdout, "gpt4")[:4] == ["0.00"] * 4


@pytest.mark.parametrize("problem", ["size", "rgb", "corrupt", "truncated", "jpeg"])
def test_bad_prediction_files_are_named_in_one_line(release_dir, tmp_path, capsys, problem):
    truths = release_truths(release_dir)
    predictions = {(kind, sample_id): mask for sample_id, (mask, _) in truths.items() for kind in TRPS}
    folder = write_predictions(tmp_path / "pred", predictions)
    victim_id = sorted(truths)[1]
    victim = os.path.join(folder, "gpt4", victim_id + ".png")
    height, width = truths[victim_id][0].shape
    if problem == "size":
        Image.new("L", (width + 1, height)).save(victim)
        expected = f"prediction size {width + 1}x{height} differs from the ground-truth mask size {width}x{height}"
    elif problem == "rgb":
        Image.new("RGB", (width, height)).save(victim)
        expected = "a mode-RGB image; a mask must be single-channel"
    elif problem == "corrupt":
        with open(victim, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        expected = "unreadable PNG"
    elif problem == "truncated":
        with open(victim, "rb") as f:
            data = f.read()
        with open(victim, "wb") as f:
            f.write(data[: len(data) // 2])
        expected = "unreadable PNG"
    else:
        Image.new("L", (width, height)).save(victim, format="JPEG")
        expected = "not a PNG file (JPEG)"
    code, _, err = run(capsys, "--predictions", folder, "--data-dir", release_dir, "--num-workers", 1)
    assert code == 2
    err = error_line(err)
    assert victim in err and expected in err


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--predictions", "{tmp}/nowhere", "--data-dir", "{release}"], "{tmp}/nowhere: no such predictions folder"),
        (["--predictions", "{tmp}", "--data-dir", "{release}", "--config", "xyz"], "unknown config 'xyz'"),
        (["--predictions", "{tmp}", "--data-dir", "{release}", "--split", "val"], "unknown split 'val'"),
        (["--predictions", "{tmp}", "--data-dir", "{tmp}"], "neither a release folder"),
    ],
)
def test_bad_arguments_get_one_line_errors(release_dir, tmp_path, capsys, arguments, expected):
    arguments = [a.format(tmp=tmp_path, release=release_dir) for a in arguments]
    code, _, err = run(capsys, *arguments, "--num-workers", 1)
    assert code == 2
    err = error_line(err)
    assert expected.format(tmp=tmp_path) in err


@pytest.mark.slow
def test_a_fresh_interpreter_with_two_workers_scores_perfect_orps_predictions(release_dir, tmp_path):
    truths = release_truths(release_dir)
    perfect = {(kind, sample_id): mask for sample_id, (mask, _) in truths.items() for kind in ORPS}
    folder = write_predictions(tmp_path / "pred", perfect)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "instructpart_metric",
            "score",
            "--predictions",
            folder,
            "--data-dir",
            release_dir,
            "--config",
            "orps",
            "--num-workers",
            "2",
            "--json",
            str(tmp_path / "r.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert list(results["configs"]["orps"]["by"]["instruction_type"]) == list(ORPS)
    assert results["configs"]["orps"]["all"] == {**PERFECT, "num_samples": 4 * len(truths)}
