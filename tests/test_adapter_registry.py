"""The adapter registry: one list of specs (the README and the evaluate command's help agree with it), each
module imported on first use only."""

import inspect
import json
import os
import re
import subprocess
import sys

import pytest

from pisa_model.adapters import ADAPTER_SPECS, load_adapter
from pisa_model.adapters.base import Adapter
from pisa_model.evaluate import _parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_specs() -> list:
    """The spec column of the README's adapter table (the rows after "MODEL is a PISA checkpoint folder")."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    table = text[text.index("| spec | what |") :].split("\n\n")[0]
    return re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE)


def test_readme_lists_every_builtin_adapter_but_the_checkpoint_folder():
    names = [spec.partition(":")[0] for spec in readme_specs()]
    assert sorted(names) == sorted(s.name for s in ADAPTER_SPECS if s.name != "pisa")


def test_every_spec_names_a_keyword_only_factory_in_its_module():
    import importlib

    for spec in ADAPTER_SPECS:
        assert spec.syntax.split(" | ")[-1].partition(":")[0] == spec.name, spec
        factory = getattr(importlib.import_module(f"pisa_model.adapters.{spec.module}"), spec.factory)
        parameters = inspect.signature(factory).parameters
        assert list(parameters)[0] == "argument" and parameters["device"].kind == parameters["device"].KEYWORD_ONLY


def test_evaluate_help_prints_every_spec(capsys):
    with pytest.raises(SystemExit) as exited:
        _parse_args(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for spec in ADAPTER_SPECS:
        assert spec.syntax in text and spec.summary in text


def test_loading_one_adapter_imports_no_other_adapter_module():
    code = (
        "import json, sys\n"
        "from pisa_model.adapters import load_adapter\n"
        "before = sorted(m for m in sys.modules if m.startswith('pisa_model.adapters.'))\n"
        "load_adapter('full-image')\n"
        "after = sorted(m for m in sys.modules if m.startswith('pisa_model.adapters.'))\n"
        "print(json.dumps([before, after]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout.strip().splitlines()[-1])
    assert before == ["pisa_model.adapters.base", "pisa_model.adapters.registry"]
    assert after == ["pisa_model.adapters.base", "pisa_model.adapters.baselines", "pisa_model.adapters.registry"]


def test_a_registered_adapter_loads_by_name_and_unknown_names_list_it():
    from pisa_model.adapters import register_adapter

    class Constant(Adapter):
        def predict(self, images, instructions):
            return []

    @register_adapter("constant-for-test")
    def constant(argument, *, device=None, dtype=None):
        adapter = Constant()
        adapter.name = f"constant-for-test:{argument}"
        return adapter

    assert load_adapter("constant-for-test:x").name == "constant-for-test:x"
    try:
        load_adapter("no-such-adapter")
    except ValueError as error:
        assert "constant-for-test" in str(error) and "reason-then-ground" in str(error)
    else:
        raise AssertionError("an unknown adapter name was accepted")
