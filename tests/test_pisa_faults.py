"""PISA under faults: broken checkpoints, an evaluate output that cannot be written, and training runs that share,
reuse or resume an output folder. Errors are one line naming the path; nothing is half-written."""

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from pisa_model import PisaForPartSegmentation
from pisa_model.data import load_rows
from pisa_model.evaluate import main as evaluate_main
from pisa_model.tiny import save_tiny_pisa
from pisa_model.train import main as train_main
from pisa_model.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "--init-from",
    "tiny",
    "--config",
    "trps",
    "--batch-size",
    "1",
    "--grad-accum",
    "1",
    "--warmup-steps",
    "1",
    "--log-steps",
    "1",
    "--no-progress",
]


def _env():
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        TQDM_DISABLE="1",  # progress bars are not errors: stderr must then hold the error line alone
    )


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _one_line_error(stderr: str, prefix: str) -> str:
    """The error line; stderr holds nothing else (but, in-process, the data loader's progress bars)."""
    lines = [line for line in stderr.strip().split("\n") if "\r" not in line and line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in stderr, stderr
    return lines[0]


# --- broken checkpoints --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    good = save_tiny_pisa(str(root / "good"))
    truncated = shutil.copytree(good, root / "truncated")
    weights = truncated / "model.safetensors"
    with open(weights, "rb") as f:
        data = f.read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])  # a download or copy that stopped half-way
    incomplete = shutil.copytree(good, root / "incomplete")
    tensors = load_file(os.path.join(incomplete, "model.safetensors"))
    dropped = sorted(name for name in tensors if name.startswith("text_projection."))
    for name in dropped:
        del tensors[name]
    save_file(tensors, os.path.join(incomplete, "model.safetensors"), metadata={"format": "pt"})
    extra = shutil.copytree(good, root / "unexpected")
    tensors = load_file(os.path.join(extra, "model.safetensors"))
    tensors["old_head.weight"] = torch.zeros(2, 2)
    save_file(tensors, os.path.join(extra, "model.safetensors"), metadata={"format": "pt"})
    no_tokenizer = shutil.copytree(good, root / "no-tokenizer")
    os.remove(no_tokenizer / "tokenizer.json")
    return {
        "good": str(good),
        "truncated": str(truncated),
        "incomplete": str(incomplete),
        "dropped": dropped,
        "unexpected": str(extra),
        "no_tokenizer": str(no_tokenizer),
    }


def test_broken_checkpoints_fail_at_load_in_one_line_naming_the_path(broken_checkpoints):
    paths = broken_checkpoints
    with pytest.raises(OSError) as error:
        PisaForPartSegmentation.from_pretrained(paths["truncated"])
    message = str(error.value)
    assert "\n" not in message and os.path.join(paths["truncated"], "model.safetensors") in message
    assert "not a readable safetensors file" in message

    with pytest.raises(ValueError) as error:
        PisaForPartSegmentation.from_pretrained(paths["incomplete"])
    message = str(error.value)
    assert "\n" not in message and message.startswith(paths["incomplete"])
    assert f"{len(paths['dropped'])} missing weight(s) ({', '.join(paths['dropped'][:3])}, ...)" in message
    with pytest.raises(ValueError, match=r"1 unexpected weight\(s\) \(old_head.weight\)"):
        PisaForPartSegmentation.from_pretrained(paths["unexpected"])
    with pytest.raises(ValueError, match=r"processor does not load \(tokenizer.json is missing") as error:
        PisaForPartSegmentation.from_pretrained(paths["no_tokenizer"])
    assert paths["no_tokenizer"] in str(error.value)

    # Opting in loads the incomplete one, its missing parts as initialised (not as saved).
    model, info = PisaForPartSegmentation.from_pretrained(paths["incomplete"], strict=False, output_loading_info=True)
    assert sorted(info["missing_keys"]) == paths["dropped"]
    saved = load_file(os.path.join(paths["good"], "model.safetensors"))
    assert torch.equal(model.state_dict()["mask_decoder.iou_token.weight"], saved["mask_decoder.iou_token.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("which", ["truncated", "incomplete"])
def test_evaluate_on_a_broken_checkpoint_is_one_line_on_stderr(broken_checkpoints, release_dir, tmp_path, which):
    path = broken_checkpoints[which]
    run = subprocess.run(
        [sys.executable, "-m", "pisa_model.evaluate", "--model", path, "--data-dir", release_dir]
        + ["--output-dir", str(tmp_path / "out"), "--no-progress"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    line = _one_line_error(run.stderr, "python -m pisa_model.evaluate: error: ")
    assert path in line
    assert not os.path.exists(tmp_path / "out" / "results.json")


# --- evaluate's output location ------------------------------------------------------------------------------


def test_evaluate_refuses_an_unwritable_output_before_any_work(release_dir, tmp_path, capsys, monkeypatch):
    import pisa_model.evaluate as evaluate

    def no_work(*args, **kwargs):
        raise AssertionError("the output location must be checked before the data and the model")

    monkeypatch.setattr(evaluate, "load_adapter", no_work)
    monkeypatch.setattr("instructpart_dataset.load_instructpart", no_work)
    a_file = tmp_path / "results-file"
    a_file.write_text("not a folder")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").mkdir()
    # An output that cannot be written is a failed operation (exit 1), reported before any work.
    cases = [
        (str(a_file), [], f"{a_file}: cannot write: not a folder"),
        (str(a_file / "sub" / "dir"), [], f"{a_file / 'sub' / 'dir'}: cannot write: {a_file} is a file, not a folder"),
        (str(tmp_path / "out"), [], f"{tmp_path / 'out' / 'results.json'}: cannot write: Is a directory"),
    ]
    for output, extra, message in cases:
        argv = ["--model", "full-image", "--data-dir", release_dir, "--output-dir", output, "--no-progress", *extra]
        assert evaluate_main(argv) == 1
        line = _one_line_error(capsys.readouterr().err, "python -m pisa_model.evaluate: error: ")
        assert message in line, line
    assert a_file.read_text() == "not a folder"


# --- training: one run per output folder, refusals before any work --------------------------------------------


def _train_args(release_dir, out, *extra):
    return ["--data-dir", release_dir, "--output-dir", str(out), *FAST, *extra]


def test_a_fresh_run_refuses_a_folder_holding_another_run_and_a_resume_refuses_changes(release_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train(_train_args(release_dir, out, "--max-steps", "2", "--save-steps", "2", "--lora-rank", "2"))
    weights, checkpoint = out / "model.safetensors", out / "checkpoints" / "checkpoint-2"
    before = _digest(weights), _digest(checkpoint / "model.safetensors")
    capsys.readouterr()

    # A fresh run into it: refused, nothing touched.
    assert train_main(_train_args(release_dir, out, "--max-steps", "1", "--lora-rank", "2")) == 2
    line = _one_line_error(capsys.readouterr().err, "python -m pisa_model.train: error: ")
    assert f"{out} holds another run (checkpoints/, metrics.jsonl, model.safetensors)" in line
    assert "--overwrite-output-dir" in line
    # A resume already past --max-steps: refused, no "final" model written.
    resume = ["--data-dir", release_dir, "--output-dir", str(out), "--resume-from", "latest"]
    assert train_main([*resume, "--max-steps", "1"]) == 2
    line = _one_line_error(capsys.readouterr().err, "python -m pisa_model.train: error: ")
    assert f"{checkpoint} is at step 2, past --max-steps 1" in line
    # A resume that changes what exact continuation needs: refused, naming the setting.
    for flag, value in [("--seed", "1"), ("--batch-size", "2"), ("--grad-accum", "2"), ("--lora-rank", "4")]:
        assert train_main([*resume, flag, value]) == 2
        line = _one_line_error(capsys.readouterr().err, "python -m pisa_model.train: error: ")
        assert f"{flag} {value} differs from the" in line and f"{checkpoint} was trained with" in line, line
    assert (_digest(weights), _digest(checkpoint / "model.safetensors")) == before

    # With the explicit flag the fresh run starts over: the old checkpoints and log go.
    train(_train_args(release_dir, out, "--max-steps", "1", "--overwrite-output-dir"))
    assert not os.path.exists(out / "checkpoints")
    with open(out / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1]
    assert _digest(weights) != before[0]


def test_a_batch_larger_than_the_split_is_refused(release_dir, tmp_path, capsys):
    rows = len(load_rows(release_dir, configs="trps", split="train200"))
    argv = _train_args(release_dir, tmp_path / "big", "--split", "train200", "--max-steps", "1")
    argv[argv.index("--batch-size") + 1] = str(rows + 1)
    assert train_main(argv) == 2
    line = _one_line_error(capsys.readouterr().err, "python -m pisa_model.train: error: ")
    assert f"--batch-size {rows + 1} x 1 process(es) is more than the {rows} rows of trps / train200" in line
    assert not os.path.exists(tmp_path / "big" / "model.safetensors")


def test_a_second_run_into_a_locked_folder_fails_at_once(release_dir, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    handle = os.open(out, os.O_RDONLY)  # what a live run holds
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert train_main(_train_args(release_dir, out, "--max-steps", "1")) == 2
        line = _one_line_error(capsys.readouterr().err, "python -m pisa_model.train: error: ")
        assert f"{out}: another pisa_model.train run is writing there" in line
        assert os.listdir(out) == []
    finally:
        os.close(handle)


@pytest.mark.slow
def test_two_runs_started_together_into_one_folder_one_wins_intact(release_dir, tmp_path):
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "pisa_model.train", *_train_args(release_dir, out, "--max-steps", "30")]
    runs = [subprocess.Popen(command, env=_env(), stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    line = loser.strip().splitlines()[-1]
    assert "another pisa_model.train run is writing there" in line or "holds another run" in line, loser
    with open(out / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 31))
    PisaForPartSegmentation.from_pretrained(str(out))


@pytest.mark.slow
def test_a_killed_run_resumed_with_latest_in_its_folder_ends_as_an_uninterrupted_run(release_dir, tmp_path):
    # As a user would: the run dies (kill -9) after a checkpoint, the same command plus --resume-from latest
    # continues in the same folder; the result must be the uninterrupted run's, bit for bit.
    steps = ["--max-steps", "14", "--save-steps", "2", "--lora-rank", "2", "--lr", "1e-3"]
    out = tmp_path / "killed"
    run = subprocess.Popen(
        [sys.executable, "-m", "pisa_model.train", *_train_args(release_dir, out, *steps)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = out / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not first.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert first.exists() and not (out / "model.safetensors").exists(), "the run was not interrupted mid-way"

    # Only what the run needs besides its recorded settings (it holds max-steps, LoRA, lr, seed...).
    train(["--data-dir", release_dir, "--output-dir", str(out), "--resume-from", "latest"] + FAST[-3:])
    straight = train(_train_args(release_dir, tmp_path / "straight", *steps))

    a, b = load_file(os.path.join(straight, "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    with open(os.path.join(straight, "metrics.jsonl")) as f:
        expected = [json.loads(line) for line in f]
    with open(out / "metrics.jsonl") as f:
        assert [json.loads(line) for line in f] == expected  # each step once, none lost, none repeated
