"""upload.py's checkpoint guard decides by content: pickles are refused under any name (plain, protocol 0,
inside torch's zip format, compressed as joblib does), and only safetensors, JSON, text and tokenizer files
pass. Pickles are made here with the real `pickle` / `torch.save`, not written by hand."""

import bz2
import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
import zlib

import pytest

import upload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STATE = {"step": 3, "rng": [1, 2, 3], "lr": 0.001}


def torch_zip(path):
    import torch

    torch.save({"weight": torch.zeros(2)}, path)
    return open(path, "rb").read()


def torch_legacy(path):
    import torch

    torch.save({"weight": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    return open(path, "rb").read()


PICKLES = {
    "state.pickle": lambda path: pickle.dumps(STATE, protocol=5),
    "training_args.BIN": torch_zip,
    "optimizer.PT": torch_legacy,
    "rng.joblib": lambda path: zlib.compress(pickle.dumps(STATE, protocol=4)),
    "scheduler.gz": lambda path: gzip.compress(pickle.dumps(STATE, protocol=2)),
    "extra.bz2": lambda path: bz2.compress(pickle.dumps(STATE, protocol=3)),
    "notes.txt": lambda path: pickle.dumps(STATE, protocol=0),  # ASCII opcodes: would pass as text by name
    "args.json": lambda path: pickle.dumps(STATE, protocol=1),
    "model-00002.safetensors": lambda path: pickle.dumps(STATE, protocol=4),
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from pisa_model.tiny import save_tiny_pisa

    folder = str(tmp_path_factory.mktemp("tiny-pisa"))
    save_tiny_pisa(folder)
    return folder


def write(path, make):
    data = make(str(path))
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name", sorted(PICKLES))
def test_pickles_are_refused_whatever_their_name(name, tmp_path):
    path = write(tmp_path / name, PICKLES[name])
    with open(path, "rb") as f:  # the file really is what the test says: it unpickles (torch's zip aside)
        if name not in ("training_args.BIN", "optimizer.PT"):
            data = f.read()
            for decompress in (zlib.decompress, gzip.decompress, bz2.decompress):
                try:
                    data = decompress(data)
                except Exception:
                    pass
            assert pickle.loads(data) == STATE
    with pytest.raises(ValueError, match="pickle") as refused:
        upload.check_publishable_file(path)
    assert str(refused.value).startswith(f"{path}: ")


def test_the_checkpoint_files_this_package_writes_pass(tiny_checkpoint):
    kinds = {
        name: upload.check_publishable_file(os.path.join(tiny_checkpoint, name)) for name in os.listdir(tiny_checkpoint)
    }
    assert kinds["model.safetensors"] == "safetensors" and kinds["config.json"] == "json"
    assert kinds["modeling_pisa.py"] == "text" and kinds["tokenizer.json"] == "json"
    assert set(kinds.values()) <= {"safetensors", "json", "text"}, kinds


def test_tokenizer_and_text_files_pass_and_other_binaries_do_not(tmp_path):
    import numpy as np

    model = tmp_path / "tokenizer.model"
    model.write_bytes(b"\x0a\x0b\x0a\x05<unk>\x15\x00\x00\x00\x00\x18\x02")  # a sentencepiece ModelProto's start
    assert upload.check_publishable_file(str(model)) == "sentencepiece"
    merges = tmp_path / "merges.txt"
    merges.write_text("#version: 0.2\n" + "".join(f"\u0120t{i} h{i}\n" for i in range(120_000)), encoding="utf-8")
    assert os.path.getsize(merges) > 1 << 20 and upload.check_publishable_file(str(merges)) == "text"
    template = tmp_path / "chat_template.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}.{% endfor %}")
    assert upload.check_publishable_file(str(template)) == "text"
    array = tmp_path / "mean.npy"
    np.save(array, np.arange(4.0))
    with pytest.raises(ValueError, match=r"mean\.npy: neither safetensors, JSON, UTF-8 text nor a tokenizer model"):
        upload.check_publishable_file(str(array))
    (tmp_path / "renamed.model").write_bytes(model.read_bytes())  # only the tokenizer's own names
    with pytest.raises(ValueError, match="neither safetensors"):
        upload.check_publishable_file(str(tmp_path / "renamed.model"))
    broken = tmp_path / "config.json"
    broken.write_text('{"a": 1,')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        upload.check_publishable_file(str(broken))
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a json header")
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file"):
        upload.check_publishable_file(str(fake))


def test_stage_model_refuses_a_checkpoint_with_a_pickle_and_stages_nothing(tiny_checkpoint, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, folder)
    write(folder / "rng.joblib", PICKLES["rng.joblib"])
    stage = tmp_path / "stage"
    with pytest.raises(ValueError, match=r"rng\.joblib: its bytes are a pickle"):
        upload.stage_model(str(folder), str(stage), "org/x", [])
    assert not stage.exists()


def run_upload(args, cwd):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "upload.py"), *args],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )


def one_error_line(result, status):
    assert result.returncode == status, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith("upload.py: error: ")
    return lines[0]


def test_cli_refuses_a_pickle_under_another_name_in_one_line(tiny_checkpoint, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, folder)
    write(folder / "training_args.BIN", PICKLES["training_args.BIN"])
    result = run_upload(["model", "--checkpoint", str(folder), "--repo-id", "org/x", "--dry-run"], tmp_path)
    line = one_error_line(result, 2)
    assert f"{folder / 'training_args.BIN'}: a zip holding a pickle" in line
    assert not (tmp_path / "hub-staging" / "model" / "x").exists()


def test_cli_stage_under_a_file_fails_in_one_line_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    stage = blocker / "staging"
    result = run_upload(["metric", "--repo-id", "org/instructpart", "--stage", str(stage), "--dry-run"], tmp_path)
    line = one_error_line(result, 1)
    assert line == f"upload.py: error: {stage}: cannot write: Not a directory"
    assert blocker.read_text() == "not a folder"


def test_tiny_checkpoint_files_are_what_the_package_saves(tiny_checkpoint):
    # Guards the test above against a fixture that silently stops writing the files it checks.
    with open(os.path.join(tiny_checkpoint, "config.json")) as f:
        assert json.load(f)["model_type"] == "pisa"
