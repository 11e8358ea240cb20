"""`python -m pisa_model.demo` as a user runs it: a model named like a built-in baseline, a release without a
train split, and (slow) the default settings end to end, whose log must be free of library noise."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from pisa_model import demo


def summaries(out):
    with open(os.path.join(out, "report", "report.json")) as f:
        return json.load(f)["models"]


@pytest.mark.slow  # a subprocess of the whole command (over ~4 s here)
def test_a_model_named_like_a_baseline_replaces_it(release_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert demo.main(["--out", str(out), "--data-dir", release_dir, "--model", "full-image"]) == 0
    assert set(summaries(out)) == {"full-image", "centre-ellipse"}
    # the user's choice wins: a checkpoint-less centre-ellipse under the name full-image
    out2 = tmp_path / "out2"
    assert demo.main(["--out", str(out2), "--data-dir", release_dir, "--model", "full-image=centre-ellipse"]) == 0
    models = summaries(out2)
    assert set(models) == {"full-image", "centre-ellipse"}
    user_choice = models["full-image"]["by_config"]["trps"]["gIoU"]
    assert user_choice == models["centre-ellipse"]["by_config"]["trps"]["gIoU"]
    assert user_choice != summaries(out)["full-image"]["by_config"]["trps"]["gIoU"]
    capsys.readouterr()


def test_two_models_under_one_name_are_one_line(release_dir, tmp_path, capsys):
    argv = [
        "--out",
        str(tmp_path / "o"),
        "--data-dir",
        release_dir,
        "--model",
        "a=full-image",
        "--model",
        "a=centre-ellipse",
    ]
    assert demo.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "python -m pisa_model.demo: error: --model 'a=full-image' and --model 'a=centre-ellipse' are both named 'a'; "
        "name one: --model NAME=SPEC"
    )


@pytest.mark.slow  # a subprocess of the whole command (over ~4 s here)
def test_a_release_without_a_train_split_skips_the_ellipse_with_one_sentence(release_dir, tmp_path, capsys):
    test_only = tmp_path / "test-only"
    shutil.copytree(os.path.join(release_dir, "test"), test_only / "test")
    assert demo.main(["--out", str(tmp_path / "o"), "--data-dir", str(test_only)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: centre-ellipse skipped: {test_only} has no readable train split to take its area from; "
        "pass --centre-ellipse-area 0.09 (the mean part area of 60 real test images)"
    ]
    assert set(summaries(tmp_path / "o")) == {"full-image"}
    # the flag the note names does what it says
    assert demo.main(["--out", str(tmp_path / "o"), "--data-dir", str(test_only), "--centre-ellipse-area", "0.09"]) == 0
    assert set(summaries(tmp_path / "o")) == {"full-image", "centre-ellipse"}
    capsys.readouterr()


@pytest.mark.slow
def test_the_default_demo_writes_the_report_the_readme_names_and_a_quiet_log(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pisa_model.demo"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    report = tmp_path / "out" / "demo" / "report" / "report.html"
    assert report.is_file() and f"report: {report}" in run.stdout
    models = summaries(tmp_path / "out" / "demo")
    for config in ("trps", "orps"):
        pisa = models[demo.TINY_PISA]["by_config"][config]["gIoU"]
        floors = [models[name]["by_config"][config]["gIoU"] for name in demo.BASELINES]
        assert pisa > 2 * max(floors), (config, pisa, floors)  # clearly above the floors, not just above
    log = run.stdout + run.stderr
    for noise in ("requires torchvision", "You are using a model of type", "Traceback", "Loading weights"):
        assert noise not in log, noise
