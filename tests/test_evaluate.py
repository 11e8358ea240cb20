"""`python -m pisa_model.evaluate`: every adapter end to end on a generated release, numbers against a naive
computation from the release files and from the saved predictions, 2 processes = 1 process, one-line errors."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tiny_adapters as tiny
from PIL import Image

from instructpart_dataset import load_instructpart
from instructpart_metric import mask_counts
from pisa_model.adapters.baselines import FullImageAdapter
from pisa_model.adapters.reason_then_ground import ReasonThenGroundAdapter
from pisa_model.evaluate import evaluate_model, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THRESHOLDS = [k / 20 for k in range(10, 20)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tiny.save_tiny_checkpoints(str(tmp_path_factory.mktemp("tiny-checkpoints")))


def _run(release_dir, out, model, *extra):
    argv = ["--model", model, "--data-dir", release_dir, "--output-dir", str(out), "--no-progress", *extra]
    assert main(argv) == 0
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def _release_entries(release_dir, split="test"):
    """(id, object, mask) per annotated part, read straight from the release's json and PNGs."""
    with open(os.path.join(release_dir, split, f"data_{split}.json")) as f:
        records = json.load(f)
    entries = []
    for record in records:
        stem = record["image_path"].rsplit(".", 1)[0]
        for part in record["part_list"]:
            sample = f"{stem}-{part['object'].replace(' ', '_')}-{part['part'].replace(' ', '_')}"
            mask = np.asarray(Image.open(os.path.join(release_dir, split, "masks", sample + ".png"))) > 0
            entries.append((sample, part["object"], mask))
    return entries


def _naive_metrics(ious, intersections, unions):
    ious = np.asarray(ious)
    return {
        "gIoU": float(np.mean(ious)),
        "cIoU": float(np.sum(intersections) / np.sum(unions)),
        "P@50": float(np.mean(ious >= 0.5)),
        "P@50:95": float(np.mean([np.mean(ious >= t) for t in THRESHOLDS])),
    }


def _assert_metrics(actual, expected):
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-12), key


def test_full_image_numbers_equal_a_naive_computation_from_the_release_files(release_dir, tmp_path, capsys):
    results = _run(release_dir, tmp_path, "full-image", "--save-predictions", "--by", "object")
    entries = _release_entries(release_dir)
    # full image: intersection = mask area, union = image area, for each of the two trps rows of an entry.
    areas = [int(mask.sum()) for _, _, mask in entries]
    pixels = [mask.size for _, _, mask in entries]
    expected = _naive_metrics([a / p for a, p in zip(areas, pixels)], areas, pixels)
    trps = results["configs"]["trps"]
    assert trps["all"]["num_samples"] == 2 * len(entries)
    _assert_metrics(trps["all"], expected)
    for kind in ("human", "gpt4"):
        _assert_metrics(trps["by"]["instruction_type"][kind], expected)
    for name in {obj for _, obj, _ in entries}:
        chosen = [(a, p) for (_, obj, _), a, p in zip(entries, areas, pixels) if obj == name]
        _assert_metrics(trps["by"]["object"][name], _naive_metrics([a / p for a, p in chosen], *zip(*chosen)))
    for sample, _, mask in entries:
        for kind in ("human", "gpt4"):
            saved = np.asarray(Image.open(tmp_path / "predictions" / kind / f"{sample}.png"))
            assert saved.shape == mask.shape and saved.all()
    printed = capsys.readouterr().out
    assert "| human" in printed and "| TRPS (all)" in printed and f"{100 * expected['gIoU']:.2f}" in printed


@pytest.mark.slow
def test_full_image_on_the_real_sample_equals_a_naive_computation(sample_dir, tmp_path):
    results = _run(sample_dir, tmp_path, "full-image", "--config", "orps")
    entries = _release_entries(sample_dir)
    areas = [int(mask.sum()) for _, _, mask in entries]
    pixels = [mask.size for _, _, mask in entries]
    assert results["configs"]["orps"]["all"]["num_samples"] == 4 * len(entries)
    _assert_metrics(
        results["configs"]["orps"]["all"], _naive_metrics([a / p for a, p in zip(areas, pixels)], areas, pixels)
    )


ADAPTERS = ["full-image", "centre-ellipse", "clipseg", "grounded-sam", "sam3", "reason-then-ground", "pisa"]


@pytest.mark.parametrize("name", ADAPTERS)
def test_every_adapter_end_to_end_through_the_command(checkpoints, release_dir, tmp_path, name):
    spec = "centre-ellipse" if name == "centre-ellipse" else tiny.tiny_specs(checkpoints)[name]
    results = _run(
        release_dir, tmp_path, spec, "--save-predictions", "--batch-size", "3", "--config", "orps", "--limit", "11"
    )
    rows = load_instructpart(release_dir, config="orps", split="test").select(range(11))
    assert results["configs"]["orps"]["all"]["num_samples"] == 11
    assert results["execution"]["processes"] == 1
    # Re-score the saved PNGs against the dataset's masks: the files are the masks that were scored.
    ious, intersections, unions = [], [], []
    for row in rows:
        path = tmp_path / "predictions" / row["instruction_type"] / f"{row['id']}.png"
        saved = np.asarray(Image.open(path)) > 0
        assert saved.shape == row["mask"].shape == (row["image"].height, row["image"].width)
        i, u = mask_counts(saved, row["mask"])
        ious.append(i / u if u else 1.0)
        intersections.append(i)
        unions.append(u)
    assert len(glob.glob(str(tmp_path / "predictions" / "*" / "*.png"))) == 11
    _assert_metrics(results["configs"]["orps"]["all"], _naive_metrics(ious, intersections, unions))
    if name == "reason-then-ground":
        with open(tmp_path / "predictions" / "phrases.jsonl") as f:
            records = [json.loads(line) for line in f]
        assert [(r["instruction_type"], r["id"]) for r in records] == [(r["instruction_type"], r["id"]) for r in rows]
        assert all({"answer", "phrase", "answer_part", "answer_object", "part", "object"} <= set(r) for r in records)
        assert results["reasoning"]["all"]["samples"] == 11


def test_reasoning_step_is_scored_against_the_truth(release_dir, tmp_path):
    """A scripted reasoner (right for human rows, always "lid of the kettle" for gpt4 rows) through evaluate_model."""
    rows = load_instructpart(release_dir, config="trps", split="test")
    truth = {
        (r["instruction"]): (r["instruction_type"], r["part"], r["object"])
        for r in rows.select_columns(["instruction", "instruction_type", "part", "object"])
    }

    def reasoner(images, instructions):
        answers = []
        for instruction in instructions:
            kind, part, obj = truth[instruction]
            answers.append(
                f"You should use the {part.upper()} of the {obj}." if kind == "human" else "lid of the kettle"
            )
        return answers

    adapter = ReasonThenGroundAdapter(reasoner, FullImageAdapter())
    scorer, extras = evaluate_model(adapter, rows, batch_size=5, prediction_dir=str(tmp_path), progress=False)
    gpt4 = [(part, obj) for kind, part, obj in truth.values() if kind == "gpt4"]
    expected_gpt4 = {
        "samples": len(gpt4),
        "parsed": 1.0,
        "part": sum(part == "lid" for part, _ in gpt4) / len(gpt4),
        "object": sum(obj == "kettle" for _, obj in gpt4) / len(gpt4),
        "part_and_object": sum((part, obj) == ("lid", "kettle") for part, obj in gpt4) / len(gpt4),
    }
    reasoning = extras["summary"]["reasoning"]
    assert reasoning["human"] == {
        "samples": len(rows) // 2,
        "parsed": 1.0,
        "part": 1.0,
        "object": 1.0,
        "part_and_object": 1.0,
    }
    assert reasoning["gpt4"] == pytest.approx(expected_gpt4)
    assert 0 < expected_gpt4["part"] < 1  # the fixture has lids and non-lids: the rate is not trivially 0 or 1
    assert len(scorer) == len(rows)
    with open(tmp_path / "phrases.jsonl") as f:
        phrases = [json.loads(line)["phrase"] for line in f]
    assert phrases == [
        f"{part} of the {obj}" if kind == "human" else "lid of the kettle"
        for kind, part, obj in (truth[r] for r in rows["instruction"])
    ]


def _launch_two_processes(release_dir, out, model, *extra):
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "pisa_model.evaluate", "--model", model, "--data-dir", release_dir, "--output-dir", str(out),
        "--no-progress", "--save-predictions", *extra,
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def _png_bytes(folder):
    return {
        os.path.relpath(path, folder): np.asarray(Image.open(path)).tobytes()
        for path in sorted(glob.glob(os.path.join(folder, "*", "*.png")))
    }


def _without_execution(path):
    """The file's bytes up to its last key, "execution" (processes and timing: the only part allowed to differ)."""
    text = open(path, encoding="utf-8").read()
    head, sep, _ = text.rpartition(',\n  "execution": {')
    assert sep, "results.json does not end with its execution block"
    return head


@pytest.mark.slow
@pytest.mark.parametrize("name", ["centre-ellipse", "pisa"])
def test_two_processes_on_an_odd_number_of_rows_write_the_single_process_file(checkpoints, release_dir, tmp_path, name):
    spec = "centre-ellipse" if name == "centre-ellipse" else checkpoints["pisa"]
    out = tmp_path / "run"
    args = ("--config", "trps,orps", "--limit", "7", "--batch-size", "2", "--by", "object", "--compare-published")
    # The same command (same --output-dir) on 1 process, then on 2: only the execution block may differ.
    single = _run(release_dir, out, spec, "--save-predictions", *args)
    os.rename(out, tmp_path / "one")
    double = _launch_two_processes(release_dir, out, spec, *args)
    assert double["execution"]["processes"] == 2 and single["execution"]["processes"] == 1
    assert [block["all"]["num_samples"] for block in double["configs"].values()] == [7, 7]
    assert _without_execution(out / "results.json") == _without_execution(tmp_path / "one" / "results.json")
    assert double["provenance"]["command"].startswith("python -m pisa_model.evaluate --model ")
    assert _png_bytes(out / "predictions") == _png_bytes(tmp_path / "one" / "predictions")


def test_a_missing_checkpoint_is_one_line_and_exit_code_2(checkpoints, release_dir, tmp_path, capsys):
    missing = str(tmp_path / "missing")
    for model in (
        f"clipseg:{missing}",
        f"sam3:{missing}",
        f"reason-then-ground:{missing},clipseg:{checkpoints['clipseg']}",
        missing,
    ):
        code = main(
            ["--model", model, "--data-dir", release_dir, "--output-dir", str(tmp_path / "out"), "--no-progress"]
        )
        error = capsys.readouterr().err.strip()
        assert code == 2 and len(error.splitlines()) == 1 and missing in error, (model, error)
        assert error.startswith("python -m pisa_model.evaluate: error: ")
    assert not os.path.exists(tmp_path / "out" / "results.json")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--limit", "0"], "--limit must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--split", "validation"], "unknown split 'validation'"),
        (["--adapter-arg", "threshold"], "adapter option 'threshold' is not NAME=VALUE"),
    ],
)
def test_bad_arguments_are_one_line(release_dir, tmp_path, capsys, extra, message):
    code = main(["--model", "full-image", "--data-dir", release_dir, "--output-dir", str(tmp_path), *extra])
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and len(error.splitlines()) == 1


def test_a_wrongly_sized_prediction_names_the_sample(release_dir):
    class Wrong(FullImageAdapter):
        def predict(self, images, instructions):
            return [np.ones((image.height + 1, image.width), dtype=bool) for image in images]

    rows = load_instructpart(release_dir, config="trps", split="test").select(range(2))
    with pytest.raises(ValueError, match=f"sample human/{rows[0]['id']}: full-image predicted a"):
        evaluate_model(Wrong(), rows, progress=False)


def test_both_tasks_in_one_run_equal_two_separate_runs(release_dir, tmp_path, capsys):
    both = _run(release_dir, tmp_path / "both", "full-image", "--config", "trps,orps", "--save-predictions")
    trps = _run(release_dir, tmp_path / "trps", "full-image", "--config", "trps")
    orps = _run(release_dir, tmp_path / "orps", "full-image", "--config", "orps")
    assert list(both["configs"]) == ["trps", "orps"]
    assert both["configs"]["trps"] == trps["configs"]["trps"] and both["configs"]["orps"] == orps["configs"]["orps"]
    columns = both["paper"]["columns"]
    for group, kind in (("trps_human", "human"), ("orps_object_part", "part_question")):
        block = both["configs"]["trps" if group.startswith("trps") else "orps"]["by"]["instruction_type"][kind]
        assert all(columns[f"{group}_{key}"] == block[key] for key in ("gIoU", "cIoU", "P@50:95", "P@50"))
    assert trps["paper"]["columns"]["orps_object_part_gIoU"] is None
    assert sorted(os.listdir(tmp_path / "both" / "predictions")) == sorted(
        ["human", "gpt4", "part_question", "part_affordance_question", "part_name", "part_affordance_name"]
    )
    provenance = both["provenance"]
    assert provenance["orps_form"] == "question" and provenance["package"]["name"] == "instructpart"
    assert provenance["command"].startswith("python -m pisa_model.evaluate --model full-image --data-dir ")
    data = provenance["dataset"]
    assert (data["split"], data["configs"]["trps"]["rows"], data["configs"]["orps"]["rows"]) == (
        "test",
        both["configs"]["trps"]["all"]["num_samples"],
        both["configs"]["orps"]["all"]["num_samples"],
    )
    assert data["configs"]["trps"]["fingerprint"] == trps["provenance"]["dataset"]["configs"]["trps"]["fingerprint"]
    printed = capsys.readouterr().out
    assert "| TRPS (all)" in printed and "| ORPS (all)" in printed and "ORPS form: question" in printed


def test_a_second_run_into_the_same_folder_is_refused_unless_overwrite(release_dir, tmp_path, capsys):
    first = _run(release_dir, tmp_path, "full-image", "--config", "orps", "--save-predictions", "--limit", "3")
    before = (tmp_path / "results.json").read_bytes()
    capsys.readouterr()
    argv = ["--model", "full-image", "--data-dir", release_dir, "--output-dir", str(tmp_path), "--no-progress"]
    assert main([*argv, "--config", "trps", "--limit", "2"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(tmp_path / "results.json") in error and "--overwrite" in error
    assert (tmp_path / "results.json").read_bytes() == before
    assert main([*argv, "--config", "trps", "--limit", "2", "--save-predictions", "--overwrite"]) == 0
    second = json.loads((tmp_path / "results.json").read_text())
    assert list(second["configs"]) == ["trps"] and list(first["configs"]) == ["orps"]
    # the earlier run's predictions went with it: only this run's files are in predictions/
    assert sorted(os.listdir(tmp_path / "predictions")) == ["gpt4", "human"]  # no part_* folder left


def test_a_pisa_checkpoint_is_identified_by_its_config_and_weights(checkpoints, release_dir, tmp_path):
    import hashlib

    results = _run(release_dir, tmp_path, checkpoints["pisa"], "--limit", "1")
    (found,) = results["provenance"]["model"]["checkpoints"].values()
    with open(os.path.join(checkpoints["pisa"], "config.json"), "rb") as f:
        assert found["config_sha256"] == hashlib.sha256(f.read()).hexdigest()
    weights = hashlib.sha256()
    for name in sorted(n for n in os.listdir(checkpoints["pisa"]) if n.endswith(".safetensors")):
        with open(os.path.join(checkpoints["pisa"], name), "rb") as f:
            weights.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    assert found["weights_sha256"] == weights.hexdigest() and found["revision"] is None
