"""With only the base install's requirements (no peft, matplotlib, evaluate, gradio or lmms-eval), every module of the package
imports, except the one documented as needing an extra, and what needs an extra says which, in one line."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The extras' packages, hidden from a fresh interpreter as if they were not installed.
EXTRAS = {"peft": "lora", "matplotlib": "report", "evaluate": "evaluate", "gradio": "space", "lmms_eval": "lmms"}
# Modules that need an extra at import: the evaluate module wrapper (a script `evaluate.load` runs) and the
# Gradio Space apps (run locally with `python -m ...space`).
NEEDS_AN_EXTRA = {
    "instructpart_metric.instructpart_metric": "evaluate",
    "instructpart_metric.space.app": "space",
    "instructpart_metric.space.__main__": "space",
    "pisa_model.space.app": "space",
    "pisa_model.space.__main__": "space",
    "pisa_model.lmms_model": "lmms",
    "instructpart_metric.leaderboard_space.app": "space",
}

PROBE = r"""
import importlib, importlib.abc, json, pkgutil, sys

BLOCKED = set(sys.argv[1].split(","))


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Blocker())
import torch

torch.set_num_threads(1)
results = {}
for package in ("instructpart_dataset", "instructpart_metric", "pisa_model"):
    names = [package] + [m.name for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")]
    for name in names:
        try:
            importlib.import_module(name)
            results[name] = None
        except ImportError as error:
            results[name] = str(error)

uses = {}
try:
    from instructpart_metric.report_figures import bar_chart_png

    bar_chart_png("t", {"TRPS": {"m": {"a": 0.5}}}, ["m"], {"a": 1})
    uses["report"] = None
except ImportError as error:
    uses["report"] = str(error)
try:
    from pisa_model.tiny import tiny_pisa

    tiny_pisa(lora_rank=2)
    uses["lora"] = None
except ImportError as error:
    uses["lora"] = str(error)
print(json.dumps({"modules": results, "uses": uses, "blocked": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


@pytest.mark.slow
def test_every_module_imports_with_the_base_requirements_only():
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(EXTRAS)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["blocked"] == []
    modules = found["modules"]
    assert len(modules) > 30 and "pisa_model.modeling_pisa" in modules and "instructpart_metric.report" in modules
    failed = {name: error for name, error in modules.items() if error is not None}
    assert set(failed) == set(NEEDS_AN_EXTRA), failed
    for name, extra in NEEDS_AN_EXTRA.items():
        assert "\n" not in failed[name] and f"pip install instructpart[{extra}]" in failed[name]
    for extra, error in found["uses"].items():
        assert error is not None and "\n" not in error and f"instructpart[{extra}]" in error, (extra, error)


def test_the_metric_core_imports_neither_datasets_nor_torch():
    code = (
        "import sys, instructpart_metric\n"
        "from instructpart_metric import StreamingScorer, format_table, results_dict\n"
        "print(sorted(m for m in ('datasets', 'torch', 'transformers', 'evaluate') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
