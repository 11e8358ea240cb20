"""The GPU check on an offline node (issue 23): rows read without `datasets`, the bundle's resolution, the disk
refusal, and the whole `gpu_check.sh --wheels --tiny` rehearsal in a fresh venv holding an older stack."""

import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from instructpart_dataset import load_instructpart
from instructpart_dataset.release import ReleaseRows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import offline_bundle  # noqa: E402  (bench/offline_bundle.py)


@pytest.fixture(scope="module")
def awkward_release(release_dir, tmp_path_factory):
    """The generated release with one test image stored sideways under an EXIF Orientation tag (6) and one
    stored as grayscale: the two cases where a row's image is not the file's pixels as stored."""
    root = str(tmp_path_factory.mktemp("awkward") / "release")
    shutil.copytree(release_dir, root)
    images = sorted(os.listdir(os.path.join(root, "test", "images")))
    sideways, gray = (os.path.join(root, "test", "images", name) for name in images[:2])
    upright = Image.open(sideways).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown after a 270-degree rotation: store the upright picture turned by 90
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways, format="JPEG", exif=exif, quality=95)
    Image.open(gray).convert("L").save(gray, format="JPEG", quality=95)
    return root


def _assert_same_rows(ours, reference):
    assert len(ours) == len(reference)
    for index in range(len(reference)):
        mine, theirs = ours[index], reference[index]
        assert set(mine) == set(theirs)
        for column in theirs:
            if column == "image":
                assert mine["image"].mode == theirs["image"].mode == "RGB"
                assert np.array_equal(np.asarray(mine["image"]), np.asarray(theirs["image"])), theirs["id"]
            elif column == "mask":
                assert mine["mask"].dtype == bool and np.array_equal(mine["mask"], theirs["mask"]), theirs["id"]
            else:
                assert mine[column] == theirs[column], (theirs["id"], column)


@pytest.mark.parametrize(("config", "split"), [("trps", "test"), ("orps", "test"), ("trps", "train600")])
def test_release_rows_are_load_instructparts_rows(awkward_release, config, split):
    """Read without datasets, a release gives the rows `load_instructpart` gives: same order, ids, labels,
    instructions, decoded images (EXIF orientation applied, grayscale as RGB) and bool masks."""
    _assert_same_rows(
        ReleaseRows(awkward_release, config=config, split=split),
        load_instructpart(awkward_release, config=config, split=split),
    )


def test_load_rows_without_datasets_reads_a_release_folder_and_names_what_needs_it(awkward_release, monkeypatch):
    from pisa_model.data import load_rows

    with_datasets = load_rows(awkward_release, configs="trps,orps", split="test")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "datasets" else real_find_spec(name, *rest)
    )
    without = load_rows(awkward_release, configs="trps,orps", split="test")
    assert isinstance(without, ReleaseRows)
    _assert_same_rows(without, with_datasets)
    picked = without.select([5, 0])
    assert [picked[0]["id"], picked[1]["id"]] == [with_datasets[5]["id"], with_datasets[0]["id"]]
    with pytest.raises(ValueError, match="only a release folder can be read .*pip install datasets"):
        load_rows("someone/instructpart", configs="trps", split="test")


def test_bundle_takes_what_the_target_satisfies_and_the_lower_bound_of_the_rest(monkeypatch):
    """resolve() against a small fake index: the target's versions where they satisfy every requirement on them,
    the project's lower bound (.ci/constraints-min.txt) for a requirement the target misses or has too old, the
    newest fitting version for what the bundled wheels need in turn, torch never, datasets/pyarrow never."""
    index = {
        "transformers": {"5.23.0": ["tokenizers<0.24,>=0.23.1", "huggingface-hub>=1.3", "numpy>=1.17"]},
        "pillow": {"11.0.0": []},
        "tokenizers": {"0.23.1": ["huggingface-hub<3,>=0.16"], "0.23.3": ["huggingface-hub<3,>=0.16"]},
        "accelerate": {"1.1.0": ["torch>=2.0", "numpy>=1.17"]},
    }
    asked = []

    def fake_pick(requirements, python_version, platforms):
        from packaging.requirements import Requirement

        asked.extend(requirements)
        picked = {}
        for line in requirements:
            requirement = Requirement(line)
            versions = [v for v in index[requirement.name] if requirement.specifier.contains(v)]
            newest = max(versions, key=offline_bundle.Version)
            picked[requirement.name] = (newest, index[requirement.name][newest])
        return picked

    monkeypatch.setattr(offline_bundle, "pick_versions", fake_pick)
    have = {
        "torch": "2.11.0",
        "transformers": "5.17.0",  # too old for the project
        "tokenizers": "0.22.2",  # too old for transformers 5.23
        "huggingface-hub": "1.33.0",
        "accelerate": "1.15.0",
        "peft": "0.21.2",
        "safetensors": "0.8.0",
        "numpy": "2.4.6",
        "tqdm": "4.70.1",
    }
    bundled, from_target = offline_bundle.resolve(have, "3.12", offline_bundle.DEFAULT_PLATFORMS, log=lambda _: None)
    assert bundled == {"transformers": "5.23.0", "pillow": "11.0.0", "tokenizers": "0.23.3"}
    assert from_target["huggingface-hub"] == "1.33.0" and from_target["numpy"] == "2.4.6"
    assert "torch" not in bundled and not {"datasets", "pyarrow"} & (set(bundled) | set(from_target))
    assert "transformers==5.23.0" in asked and "pillow==11.0.0" in asked

    # Without --have everything but torch is bundled, the project's requirements at their lower bounds.
    index |= {name: {"9.9.9": []} for name in ("huggingface-hub", "peft", "safetensors", "numpy", "tqdm")}
    index |= {"huggingface-hub": {"1.31.0": []}, "peft": {"0.18.0": []}, "safetensors": {"0.8.0": []}}
    index |= {"numpy": {"2.0.0": []}, "tqdm": {"4.66.3": []}}
    bundled, from_target = offline_bundle.resolve({}, "3.12", offline_bundle.DEFAULT_PLATFORMS, log=lambda _: None)
    assert bundled["transformers"] == "5.23.0" and bundled["accelerate"] == "1.1.0" and bundled["numpy"] == "2.0.0"
    assert "torch" not in bundled and set(from_target) == {"torch"}


def test_read_freeze_and_the_node_example(tmp_path):
    node = offline_bundle.read_freeze(os.path.join(ROOT, "bench", "gpu-node-freeze.txt"))
    assert node["torch"] == "2.11.0" and node["transformers"] == "5.17.0" and node["huggingface-hub"] == "1.33.0"
    assert node["accelerate"] == "1.15.0" and "peft" in node and "safetensors" in node and "datasets" not in node
    bad = tmp_path / "freeze.txt"
    bad.write_text("numpy==2.0.0\nnot a pin\n")
    with pytest.raises(ValueError, match=r"freeze.txt: line 2: not a `name==version` line"):
        offline_bundle.read_freeze(str(bad))


def test_gpu_check_refuses_to_start_without_the_disk_it_needs(tmp_path):
    import pisa_gpu_check

    free = shutil.disk_usage(tmp_path).free
    message = pisa_gpu_check.refuse_without_disk(str(tmp_path / "not" / "yet"), free + 2**40)
    assert message is not None and "\n" not in message
    assert message.startswith(f"bench/gpu_check.sh: error: {tmp_path}: ")
    assert pisa_gpu_check.refuse_without_disk(str(tmp_path), 1) is None


@pytest.mark.slow
def test_disk_need_is_the_components_published_sizes():
    """The components' bytes against the parameter counts their model cards publish (LLaVA-1.5-7B 7.06 B in
    float16, DINOv2-L 304 M and SAM-H 641 M in float32): 17.9 GB, within 1%."""
    import pisa_gpu_check

    need = pisa_gpu_check.disk_needed(tiny=False)
    published = 2 * 7.06e9 + 4 * 304.4e6 + 4 * 641.1e6
    assert abs(need["components"] - published) / published < 0.01
    # The trained checkpoint: the language model and CLIP in bfloat16 at least, at most everything in float32.
    assert 2 * 7.3e9 < need["checkpoint"] < 4 * 7.3e9
    # The LISA pass: LISA-7B-v1 in bfloat16 (LLaMA-7B 6.74 B, CLIP ViT-L/14 303 M, SAM-H 641 M, projections 22 M).
    lisa = 2 * (6.7384e9 + 303.2e6 + 641.1e6 + 22.0e6)
    assert abs(need["lisa"] - lisa) / lisa < 0.01
    assert "lisa" not in pisa_gpu_check.disk_needed(tiny=False, lisa=False)


def _index_reachable() -> bool:
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "transformers"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return probe.returncode == 0 and "5.23.0" in probe.stdout


@pytest.mark.slow
def test_offline_rehearsal_in_a_venv_with_an_older_stack_and_no_datasets(tmp_path):
    """The borrowed GPU node's situation on CPU: a fresh venv holding torch and the node's older stack
    (transformers 5.17, huggingface_hub 1.33, accelerate 1.15, peft, safetensors; no datasets, no pillow). The
    check refuses there in one line; `offline_wheels.sh` builds the bundle for this Python from the venv's
    freeze; `gpu_check.sh --wheels --tiny` then installs it privately and passes, running the bundle's code."""
    if not _index_reachable():
        pytest.skip("the package index is unreachable: the bundle cannot be downloaded")
    venv = tmp_path / "node"
    python = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch_pin = "torch==" + __import__("torch").__version__
    (tmp_path / "torch.txt").write_text(torch_pin + "\n")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, torch_pin], check=True)
    stack = ["transformers==5.17.*", "huggingface_hub==1.33.*", "accelerate==1.15.*", "peft", "safetensors"]
    subprocess.run([*pip, "-c", str(tmp_path / "torch.txt"), *stack], check=True)
    freeze = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    assert "datasets==" not in freeze and "transformers==5.17." in freeze
    (tmp_path / "freeze.txt").write_text(freeze)
    env = {**os.environ, "PYTHON": python}
    env.pop("VIRTUAL_ENV", None)

    refused = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--tiny"], capture_output=True, text=True, env=env
    )
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "transformers 5.17" in lines[0] and "pillow is not installed" in lines[0]
    assert "bench/offline_wheels.sh" in lines[0]

    bundle = tmp_path / "bundle"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    built = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "offline_wheels.sh"), str(bundle), "--python-version", version]
        + ["--have", str(tmp_path / "freeze.txt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = sorted(name.split("-")[0].lower() for name in os.listdir(bundle) if name.endswith(".whl"))
    assert wheels == ["instructpart", "pillow", "transformers"], wheels
    assert "transformers-5.23.0-" in built.stdout and "MB (limit 60 MB)" in built.stdout

    run = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--wheels", str(bundle), "--tiny", "--test-rows", "8"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "transformers 5.23.0" in run.stdout and "datasets -" in run.stdout
    assert f"pisa_model from {bundle / 'site' / 'pisa_model'}" in run.stdout
    assert "finite: yes" in run.stdout and "gpu check: ok" in run.stdout
    assert "LISA predict (teacher-forced):" in run.stdout and "LISA predict (generated):" in run.stdout
    # Nothing was installed into the venv itself.
    after = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    assert after == freeze
