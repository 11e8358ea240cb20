"""The evaluate module: offline load from the checkout, add_batch loops and groups against a naive loop,
errors, and a renamed copy (as the Hub Space will hold it) that works without the installed package."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_metric_core import mask_pairs, masks_with, naive_counts, naive_metrics

evaluate = pytest.importorskip("evaluate")

MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "instructpart_metric")


@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    return evaluate.load(MODULE_DIR, cache_dir=str(tmp_path_factory.mktemp("evaluate-cache")))


def test_compute_on_hand_made_pairs(metric):
    tie, truth = masks_with((4, 5), intersection=2, prediction_only=0, reference_only=2)  # IoU 1/2
    empty = np.zeros((4, 5), bool)
    result = metric.compute(predictions=[tie, empty, empty], references=[truth, empty, truth])
    # IoUs 0.5, 1 (both empty), 0; cIoU = (2 + 0 + 0) / (4 + 0 + 4)
    assert result == {"gIoU": 0.5, "cIoU": 0.25, "P@50:95": (1 + 10 + 0) / 30, "P@50": 2 / 3, "num_samples": 3}


def test_pil_images_and_thresholded_floats(metric):
    truth = np.array([[1, 1, 0, 0]], dtype=bool)
    probabilities = np.array([[0.9, 0.5, 0.7, 0.1]])
    result = metric.compute(
        predictions=[probabilities, Image.fromarray(truth)],
        references=[truth, Image.fromarray(truth.astype(np.uint8), "L")],
        threshold=0.5,
    )
    assert result["cIoU"] == (1 + 2) / (3 + 2)


def test_threshold_applies_to_uint8_and_uint16_predictions(metric):
    truth = np.zeros((4, 4), bool)
    truth[:2] = True
    flat = np.full((4, 4), 10, np.uint8)
    wide = np.zeros((4, 4), np.uint16)
    wide[0] = 40000  # 4 true pixels above 32767
    wide[2, 0] = 50000  # 1 false positive
    wide[1] = 1000  # below the threshold
    result = metric.compute(predictions=[flat, wide], references=[truth, truth], threshold=32767)
    # by hand: flat -> I 0, U 8 (IoU 0); wide -> I 4, U 9 (IoU 4/9)
    assert result["gIoU"] == (0 + 4 / 9) / 2 and result["cIoU"] == 4 / 17
    metric.add(prediction=flat, reference=truth, threshold=127)
    assert metric.compute()["cIoU"] == 0.0
    with pytest.raises(ValueError, match="sample 0: prediction is a bool mask: threshold=127"):
        metric.compute(predictions=[truth], references=[truth], threshold=127)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(mask_pairs(), st.sampled_from(["human", "gpt4"])), min_size=1, max_size=10), st.integers(1, 4)
)
def test_add_batch_loops_with_groups_agree_with_a_naive_loop(metric, samples, batch_size):
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        metric.add_batch(
            predictions=[pair[0] for pair, _ in batch],
            references=[pair[1] for pair, _ in batch],
            groups=[group for _, group in batch],
        )
    result = metric.compute()
    counts = [naive_counts(*pair) for pair, _ in samples]
    expected = naive_metrics(counts)
    assert result["num_samples"] == len(samples)
    for key in ("cIoU", "P@50", "P@50:95"):
        assert result[key] == expected[key]
    assert result["gIoU"] == pytest.approx(expected["gIoU"], rel=1e-15, abs=1e-15)
    for group in {group for _, group in samples}:
        group_counts = [c for c, (_, g) in zip(counts, samples) if g == group]
        assert result["groups"][group]["num_samples"] == len(group_counts)
        assert result["groups"][group]["cIoU"] == naive_metrics(group_counts)["cIoU"]
        assert result["groups"][group]["P@50:95"] == naive_metrics(group_counts)["P@50:95"]


def test_add_one_at_a_time_then_compute(metric):
    truth = np.eye(3, dtype=bool)
    for prediction in (truth, np.zeros((3, 3), bool), np.ones((3, 3), bool)):
        metric.add(prediction=prediction, reference=truth)
    # IoUs 1, 0, 3/9; cIoU = (3 + 0 + 3) / (3 + 3 + 9)
    expected = {"gIoU": (1 + 0 + 1 / 3) / 3, "cIoU": 6 / 15, "P@50:95": 1 / 3, "P@50": 1 / 3, "num_samples": 3}
    assert metric.compute() == expected


def test_errors_name_the_sample_and_leave_nothing_behind(metric):
    good = np.zeros((2, 2), bool)
    metric.add_batch(predictions=[good, good], references=[good, good])
    with pytest.raises(ValueError, match=r"sample 3: prediction shape \(2, 2\) does not match reference shape"):
        metric.add_batch(predictions=[good, good], references=[good, np.zeros((2, 3), bool)])
    with pytest.raises(ValueError, match="single mask"):
        metric.add_batch(predictions=good, references=good)
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        metric.add_batch(predictions=[good], references=[good, good])
    with pytest.raises(ValueError, match="empty predictions"):
        metric.add_batch(predictions=[], references=[])
    with pytest.raises(ValueError, match="for every added sample or for none"):
        metric.add_batch(predictions=[good], references=[good], groups=["human"])
    assert metric.compute()["num_samples"] == 2  # only the first, valid batch
    with pytest.raises(ValueError, match="nothing to score"):
        metric.compute()


def test_a_renamed_copy_loads_without_the_installed_package(tmp_path):
    """The Space stages the script as instructpart/instructpart.py next to core.py."""
    folder = tmp_path / "instructpart"
    folder.mkdir()
    shutil.copy(os.path.join(MODULE_DIR, "instructpart_metric.py"), folder / "instructpart.py")
    shutil.copy(os.path.join(MODULE_DIR, "core.py"), folder / "core.py")
    renamed = evaluate.load(str(folder), cache_dir=str(tmp_path / "cache"))
    import sys

    script = sys.modules[type(renamed).__module__]
    assert script.StreamingScorer.__module__.startswith("evaluate_modules.")  # evaluate's own copy of core.py
    prediction, truth = masks_with((3, 3), intersection=3, prediction_only=1, reference_only=0)
    result = renamed.compute(predictions=[prediction], references=[truth], groups=["human"])
    assert result["groups"]["human"]["P@50:95"] == 0.6


def test_per_sample_adds_across_the_writer_flush_agree_with_a_naive_loop(metric, monkeypatch):
    # The module hands counts to evaluate's writer in chunks: make chunks small so a stream crosses several.
    monkeypatch.setattr(type(metric), "FLUSH_EVERY", 3)
    rng = np.random.default_rng(7)
    pairs = [(rng.random((5, 6)) < 0.5, rng.random((5, 6)) < 0.4) for _ in range(8)]
    for index, (prediction, truth) in enumerate(pairs):
        metric.add(prediction=prediction, reference=truth, group="human" if index % 3 else "gpt4")
    result = metric.compute()
    counts = [naive_counts(*pair) for pair in pairs]
    assert result["num_samples"] == 8 and result["cIoU"] == naive_metrics(counts)["cIoU"]
    assert result["groups"]["gpt4"]["num_samples"] == 3
    assert result["groups"]["gpt4"]["cIoU"] == naive_metrics([counts[0], counts[3], counts[6]])["cIoU"]
    metric.add(prediction=pairs[0][0], reference=pairs[0][1])  # the next stream starts empty
    assert metric.compute()["num_samples"] == 1


TWO_PROCESSES = """
import json, sys
import evaluate
import numpy as np
rank, folder, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3]
metric = evaluate.load(folder, num_process=2, process_id=rank, experiment_id="two", cache_dir=cache)
rng = np.random.default_rng(0)
pairs = [(rng.random((6, 7)) < 0.5, rng.random((6, 7)) < 0.4) for _ in range(9)]
for index in range(rank, len(pairs), 2):
    metric.add(prediction=pairs[index][0], reference=pairs[index][1])
print(json.dumps(metric.compute()))
"""


@pytest.mark.slow
def test_two_processes_adding_per_sample_give_the_union_on_process_0(tmp_path):
    import json
    import subprocess
    import sys

    cache = str(tmp_path / "cache")
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, str(rank), MODULE_DIR, cache],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=300) for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0], outputs
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    rng = np.random.default_rng(0)
    pairs = [(rng.random((6, 7)) < 0.5, rng.random((6, 7)) < 0.4) for _ in range(9)]
    expected = naive_metrics([naive_counts(*pair) for pair in pairs])
    assert second is None and first["num_samples"] == 9
    assert first["cIoU"] == expected["cIoU"] and first["P@50:95"] == expected["P@50:95"]


def test_the_installed_package_loads_its_module_from_any_folder(tmp_path, monkeypatch):
    import instructpart_metric

    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert not os.path.exists("instructpart_metric")  # evaluate.load by that name alone would fail here
    loaded = instructpart_metric.load(cache_dir=str(tmp_path / "cache"))
    truth = np.eye(4, dtype=bool)
    half = truth.copy()
    half[2:] = False
    # IoUs 1 and 2/4 by hand
    result = loaded.compute(predictions=[truth, half], references=[truth, truth])
    assert result == {"gIoU": 0.75, "cIoU": 6 / 8, "P@50:95": (10 + 1) / 20, "P@50": 1.0, "num_samples": 2}


def test_the_documented_evaluate_calls_work_from_another_folder(tmp_path):
    """The extras table's calls, in a fresh interpreter whose working folder holds no copy of the module."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")) as f:
        readme = f.read()
    row = next(line for line in readme.splitlines() if line.startswith("| `[evaluate]` |"))
    assert (
        "`instructpart_metric.load()`" in row and "`evaluate.load(instructpart_metric.evaluate_module_path())`" in row
    )
    code = (
        "import json, evaluate, numpy as np, instructpart_metric\n"
        "truth = np.eye(4, dtype=bool); half = truth.copy(); half[2:] = False\n"
        f"cache = {str(tmp_path / 'cache')!r}\n"
        "results = [m.compute(predictions=[truth, half], references=[truth, truth]) for m in (\n"
        "    instructpart_metric.load(cache_dir=cache),\n"
        "    evaluate.load(instructpart_metric.evaluate_module_path(), cache_dir=cache))]\n"
        "print(json.dumps(results))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # IoUs 1 and 2/4 by hand
    expected = {"gIoU": 0.75, "cIoU": 6 / 8, "P@50:95": (10 + 1) / 20, "P@50": 1.0, "num_samples": 2}
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [expected, expected]
