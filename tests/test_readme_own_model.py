"""The README's "Evaluate your own model" section, run verbatim in a fresh folder: its code blocks (marked
`<!-- own-model: FILE -->`) are written to FILE and the shell and Python ones run in order; the numbers they
print and write are checked against a naive loop over the generated release's masks."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from pisa_model.adapters import load_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_blocks() -> list:
    """`[(file name, code)]` of the marked blocks, in the README's order."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"<!-- own-model: (\S+) -->\n```\w+\n(.*?)```", text, flags=re.DOTALL)


def test_the_section_has_the_model_the_command_the_api_and_the_png_route():
    names = [name for name, _ in readme_blocks()]
    assert names == ["my_model.py", "evaluate.sh", "evaluate_api.py", "write_pngs.py", "score.sh"]
    code = dict(readme_blocks())
    assert "--model my_model.py:CentreSquare" in code["evaluate.sh"] and "evaluate_model(" in code["evaluate_api.py"]
    assert "python -m instructpart_metric score --predictions my-pngs" in code["score.sh"]


def _naive_giou(release: str, kind: str) -> float:
    """gIoU of the centre-square model on one instruction type, by a plain loop over the release's files."""
    from PIL import Image

    records = json.load(open(os.path.join(release, "test", "data_test.json")))
    ious = []
    for record in records:
        stem = os.path.splitext(record["image_path"])[0]
        for part in record["part_list"]:
            name = f"{stem}-{part['object']}-{part['part']}".replace(" ", "_")
            truth = np.asarray(Image.open(os.path.join(release, "test", "masks", f"{name}.png"))) > 0
            h, w = truth.shape
            square = np.zeros_like(truth)
            square[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = True
            union = np.logical_or(square, truth).sum()
            ious.append(np.logical_and(square, truth).sum() / union if union else 1.0)
    return float(np.mean(ious))  # every entry has each instruction type once, with the same mask


@pytest.mark.slow
def test_the_readme_example_runs_verbatim(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PYTHONPATH", None)
    outputs = {}
    for name, code in readme_blocks():
        (tmp_path / name).write_text(code)
        command = {".sh": ["bash", "-e", name], ".py": [sys.executable, name]}[os.path.splitext(name)[1]]
        if name == "my_model.py":
            continue
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, (name, run.stderr[-2000:])
        outputs[name] = run.stdout
    release = str(tmp_path / "my-release")
    human, gpt4 = _naive_giou(release, "human"), _naive_giou(release, "gpt4")
    results = json.loads((tmp_path / "out" / "eval" / "mine" / "results.json").read_text())
    by_type = results["configs"]["trps"]["by"]["instruction_type"]
    assert by_type["human"]["gIoU"] == pytest.approx(human, abs=1e-12)
    assert by_type["gpt4"]["gIoU"] == pytest.approx(gpt4, abs=1e-12)
    assert results["provenance"]["model"]["spec"] == "my_model.py:CentreSquare"
    assert float(outputs["evaluate_api.py"].strip().splitlines()[-1]) == pytest.approx(human, abs=1e-12)
    entries = results["configs"]["trps"]["all"]["num_samples"] // 2  # two TRPS rows per entry
    assert len(list((tmp_path / "my-pngs").rglob("*.png"))) == 6 * entries  # six instruction rows per entry
    row = next(line for line in outputs["score.sh"].splitlines() if line.startswith("| my-pngs"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    columns = results["paper"]["columns"]
    assert cells[2:] == [f"{100 * columns[c]:.2f}" for c in columns]  # the PNGs score what evaluate scored


def test_own_model_specs_load_a_file_or_a_module_and_unknown_forms_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "your_model.py").write_text(
        "import numpy as np\n"
        "class Filled:\n"
        "    def __init__(self, value=True):\n"
        "        self.value = value\n"
        "    def predict(self, images, instructions):\n"
        "        return [np.full((i.height, i.width), self.value) for i in images]\n"
        "def needs_weights(weights):\n"
        "    return Filled()\n"
    )
    from PIL import Image

    image = Image.new("RGB", (5, 3))
    from_file = load_adapter(f"{tmp_path}/your_model.py:Filled")
    assert from_file.predict([image], ["x"])[0].tolist() == [[True] * 5] * 3
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = load_adapter("your_model:Filled", value=0)  # an option the factory takes
    assert from_module.predict([image], ["x"])[0].dtype == bool and not from_module.predict([image], ["x"])[0].any()
    for spec, kind, words in [
        (f"{tmp_path}/missing.py:Filled", FileNotFoundError, "no such file"),
        (f"{tmp_path}/your_model.py:Nothing", ValueError, "no callable 'Nothing'"),
        ("no_such_module_here:Filled", ValueError, "no importable module 'no_such_module_here'"),
        ("your_model:needs_weights", ValueError, "needs 'weights'"),
        ("your_model:np", ValueError, "no callable"),
        ("not a spec", ValueError, "package.module:factory or path/to/file.py:factory"),
    ]:
        with pytest.raises(kind) as error:
            load_adapter(spec)
        assert words in str(error.value) and "\n" not in str(error.value), spec
    with pytest.raises(ValueError, match="has no option 'threshold'"):
        load_adapter("your_model:Filled", threshold=0.5)
