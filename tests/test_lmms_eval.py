"""InstructPart inside lmms-eval (the `[lmms]` extra): `python -m lmms_eval --model instructpart --model_args
spec=SPEC --tasks instructpart` on a synthetic export gives exactly the gIoU, cIoU, P@50 and P@50:95 of
`python -m pisa_model.evaluate` on the same rows, for a tiny PISA checkpoint and for full-image; the tasks are
found through the plugin mechanism too, and the model through the entry point."""

import glob
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install instructpart[lmms])")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "instructpart_metric.lmms_eval_plugin"
METRICS = ("gIoU", "cIoU", "P@50", "P@50:95")


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("LMMS_EVAL_PLUGINS", None)
    return env


def _run(command, cwd, env=None, timeout=600):
    completed = subprocess.run(command, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, (completed.stdout[-3000:], completed.stderr[-3000:])
    return completed


@pytest.fixture(scope="module")
def export_tasks(release_dir, tmp_path_factory):
    """A synthetic export (8 test entries: 16 TRPS and 32 ORPS rows) and the lmms-eval tasks that read it."""
    root = tmp_path_factory.mktemp("lmms")
    export = str(root / "export")
    _run([sys.executable, "-m", "instructpart_dataset", "export", "--data-dir", release_dir, "--output", export], ROOT)
    tasks = str(root / "tasks")
    printed = _run(
        [sys.executable, "-m", "instructpart_metric", "lmms-eval-tasks", "--data-dir", export, "--output", tasks], ROOT
    ).stdout.strip()
    assert printed == tasks
    return export, tasks, root


def _lmms_eval(spec, tasks, out, cwd):
    _run(
        [
            sys.executable, "-m", "lmms_eval", "--model", "instructpart", "--model_args", f"spec={spec}",
            "--tasks", "instructpart", "--include_path", tasks, "--batch_size", "1", "--device", "cpu",
            "--output_path", out,
        ],
        cwd,
    )  # fmt: skip
    (path,) = glob.glob(os.path.join(out, "**", "*_results.json"), recursive=True)
    with open(path, encoding="utf-8") as f:
        return json.load(f)["results"]


def _evaluate(spec, export, out, cwd):
    _run(
        [
            sys.executable, "-m", "pisa_model.evaluate", "--model", spec, "--data-dir", export,
            "--config", "trps,orps", "--batch-size", "1", "--output-dir", out, "--no-progress",
        ],
        cwd,
    )  # fmt: skip
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        return json.load(f)["configs"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["full-image", "tiny-pisa"])
def test_lmms_eval_numbers_equal_the_evaluate_commands(export_tasks, model):
    export, tasks, root = export_tasks
    spec = model
    if model == "tiny-pisa":
        from pisa_model.tiny import save_tiny_pisa

        spec = save_tiny_pisa(str(root / "tiny-pisa"))
    theirs = _lmms_eval(spec, tasks, str(root / f"lmms-{model}"), str(root))
    ours = _evaluate(spec, export, str(root / f"evaluate-{model}"), str(root))
    for config, rows in (("trps", 16), ("orps", 32)):
        task = theirs[f"instructpart_{config}"]
        assert ours[config]["all"]["num_samples"] == rows
        assert {m: task[f"{m},none"] for m in METRICS} == {m: ours[config]["all"][m] for m in METRICS}
        assert task["malformed,none"] == 0 and task["best_of_several,none"] == 0
    if model == "tiny-pisa":  # a real comparison: the tiny model does not predict full-image's masks
        assert theirs["instructpart_trps"]["gIoU,none"] != pytest.approx(0.0)


def test_the_plugin_mechanism_and_the_entry_point_find_the_tasks_and_the_model(tmp_path):
    # What lmms-eval 0.7.3 does for each LMMS_EVAL_PLUGINS name: `<plugin>.tasks` is a task folder, and
    # `<plugin>.models.AVAILABLE_MODELS` is registered (here: nothing; the model comes from the entry point).
    code = f"""
import importlib, importlib.util, json, os
os.environ["LMMS_EVAL_PLUGINS"] = "{PLUGIN}"
from lmms_eval.models import get_model
from lmms_eval.tasks import TaskManager
folder = importlib.util.find_spec("{PLUGIN}.tasks").submodule_search_locations[0]
index = TaskManager("ERROR", include_path=folder).task_index
print(json.dumps({{
    "folder": folder,
    "tasks": {{name: index[name]["type"] for name in index if name.startswith("instructpart")}},
    "model": get_model("instructpart").__module__ + "." + get_model("instructpart").__name__,
}}))
"""
    found = json.loads(_run([sys.executable, "-c", code], str(tmp_path)).stdout.strip().splitlines()[-1])
    printed = _run([sys.executable, "-m", "instructpart_metric", "lmms-eval-tasks"], str(tmp_path)).stdout.strip()
    assert os.path.realpath(found["folder"]) == os.path.realpath(printed)
    assert found["tasks"] == {"instructpart": "group", "instructpart_trps": "task", "instructpart_orps": "task"}
    assert found["model"] == "pisa_model.lmms_model.InstructPartModel"
