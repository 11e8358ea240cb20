"""Training checkpoints under faults: the checkpoint policy survives a resume, a full disk fails in one line and
leaves a folder that runs again, a checkpoint saved again is never lost, and a refusal is one line however the
run was launched."""

import errno
import json
import os
import re
import subprocess
import sys

import pytest
from test_pisa_faults import FAST  # the shortest training command line, shared by the fault tests

from pisa_model.train import main as train_main
from pisa_model.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "python -m pisa_model.train: error: "


def _args(release_dir, out, *extra):
    return ["--data-dir", release_dir, "--output-dir", str(out), *FAST, *extra]


def _checkpoints(out):
    """Every entry of OUT/checkpoints, as the file system holds it."""
    return sorted(os.listdir(os.path.join(out, "checkpoints")))


def _steps(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith(PREFIX)]


def _folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def test_a_resume_keeps_the_runs_checkpoint_policy_and_says_when_it_changes(release_dir, tmp_path, capsys):
    out = tmp_path / "run"
    # A constant schedule lets a resume extend --max-steps.
    train(
        _args(
            release_dir,
            out,
            "--max-steps",
            "2",
            "--save-steps",
            "1",
            "--save-total-limit",
            "2",
            "--lr-scheduler",
            "constant",
        )
    )
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]
    resume = [*["--data-dir", release_dir, "--output-dir", str(out)], "--resume-from", "latest", *FAST[-3:]]
    capsys.readouterr()
    train([*resume, "--max-steps", "5"])
    # Saved every step from 3 to 5, the newest two kept: the run's own policy, not the command line's defaults.
    assert _checkpoints(out) == ["checkpoint-4", "checkpoint-5"]
    assert "replaces" not in capsys.readouterr().err
    train([*resume, "--max-steps", "8", "--save-steps", "3"])
    err = capsys.readouterr().err
    assert f"--save-steps 3 replaces the 1 that {out / 'checkpoints' / 'checkpoint-5'} was saved with" in err
    assert _checkpoints(out) == ["checkpoint-5", "checkpoint-6"]  # step 6 only (every 3), still two kept
    with open(out / "checkpoints" / "checkpoint-6" / "trainer_state.json") as f:
        settings = json.load(f)["settings"]
    assert (settings["save_steps"], settings["save_total_limit"]) == (3, 2)
    assert _steps(out) == list(range(1, 9))


def _full_disk_during_save(monkeypatch):
    """Accelerate's writer fails with ENOSPC after it has written part of the checkpoint."""
    from accelerate import Accelerator

    real = Accelerator.save_state

    def save_state(self, output_dir=None, **kwargs):
        real(self, output_dir, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(output_dir, "optimizer.bin"))

    monkeypatch.setattr(Accelerator, "save_state", save_state)


def test_a_full_disk_during_a_save_is_one_line_and_the_folder_can_start_again(
    release_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "full"
    with monkeypatch.context() as patch:
        _full_disk_during_save(patch)
        assert train_main(_args(release_dir, out, "--max-steps", "2", "--save-steps", "1")) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "\r" not in line and "error" in line]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
    assert f"{out / 'checkpoints'}: disk full while saving checkpoint-1: a checkpoint needs about" in lines[0]
    needed = int(re.search(r"needs about ([\d,]+) bytes", lines[0]).group(1).replace(",", ""))
    assert _checkpoints(out) == []  # nothing half-written is left

    # The bytes named are within 10% of what a checkpoint of this run takes on disk (the estimate counts the
    # model's and the optimizer's tensors, not the serialisation overhead, RNG states and schedule).
    reference = train(_args(release_dir, tmp_path / "reference", "--max-steps", "1", "--save-steps", "1"))
    on_disk = _folder_bytes(os.path.join(reference, "checkpoints", "checkpoint-1"))
    assert 0.9 * on_disk <= needed <= on_disk, (needed, on_disk)

    # No complete checkpoint: a fresh run starts there without --overwrite-output-dir.
    train(_args(release_dir, out, "--max-steps", "2", "--save-steps", "1"))
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"] and _steps(out) == [1, 2]


def test_a_folder_without_a_complete_checkpoint_resumes_from_step_0_and_loses_its_partial(
    release_dir, tmp_path, capsys
):
    # What a run killed during its first save leaves: a partial checkpoint and the metrics logged so far.
    out = tmp_path / "killed"
    partial = out / "checkpoints" / "checkpoint-3.partial"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"\0" * 100)
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)))
    train(_args(release_dir, out, "--max-steps", "2", "--save-steps", "2", "--resume-from", "latest"))
    assert "--resume-from latest starts at step 0" in capsys.readouterr().err
    assert _checkpoints(out) == ["checkpoint-2"] and _steps(out) == [1, 2]


class Killed(BaseException):
    """A kill at an exact point of the save (BaseException: nothing catches it on the way out)."""


@pytest.mark.parametrize("moment", ["old moved aside", "new in place"])
def test_a_checkpoint_saved_again_is_never_lost_to_a_kill(release_dir, tmp_path, monkeypatch, moment):
    import shutil

    out = tmp_path / "run"
    common = ["--max-steps", "2", "--save-steps", "1", "--lr-scheduler", "constant"]
    train(_args(release_dir, out, *common))
    checkpoint = out / "checkpoints" / "checkpoint-2"
    with open(checkpoint / "model.safetensors", "rb") as f:
        saved = f.read()

    # Resuming from checkpoint-1 in the same folder saves checkpoint-2 again; the run is killed mid-replacement.
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def replace(source, target):
        if moment == "old moved aside" and str(source).endswith(".partial"):
            raise Killed
        real_replace(source, target)

    def rmtree(path, *args, **kwargs):
        if moment == "new in place" and str(path).endswith(".old") and os.path.exists(path):
            raise Killed
        real_rmtree(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace)
        patch.setattr(shutil, "rmtree", rmtree)
        with pytest.raises(Killed):
            train(_args(release_dir, out, *common, "--resume-from", str(out / "checkpoints" / "checkpoint-1")))

    # The next start finds checkpoint-2 complete (the resumed run is exact, so old and new hold the same bytes).
    train(["--data-dir", release_dir, "--output-dir", str(out), "--resume-from", "latest", "--no-progress"])
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]
    assert os.path.isfile(checkpoint / "trainer_state.json")
    with open(checkpoint / "model.safetensors", "rb") as f:
        assert f.read() == saved


LAUNCHES = {
    "python -m": [sys.executable, "-m", "pisa_model.train"],
    # Our own launch mode: accelerate's launcher run inside the command, which exits as its processes did.
    "python -m, --num-processes 2": [sys.executable, "-m", "pisa_model.train", "--num-processes", "2", "--cpu"],
    # --quiet: the launcher adds no traceback of its own, so what stays on stderr is the workers' (it still exits
    # 1 for any failed worker: accelerate launch does not pass a worker's status on).
    "accelerate launch, 1 process": [
        *[sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--cpu", "--num_processes", "1"],
        *["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pisa_model.train"],
    ],
    "accelerate launch, 2 processes": [
        *[sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--multi_gpu", "--num_processes", "2"],
        *["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pisa_model.train"],
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_a_refusal_is_one_line_and_exit_2_from_every_process_however_launched(release_dir, tmp_path, launch):
    import shutil

    # A release without its train split: refused where the rows are loaded, inside the process group.
    data = tmp_path / "test-only"
    shutil.copytree(os.path.join(release_dir, "test"), data / "test")
    env = dict(
        os.environ,
        ACCELERATE_USE_CPU="1",
        TQDM_DISABLE="1",
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    run = subprocess.run(
        [*LAUNCHES[launch], *_args(str(data), tmp_path / "out", "--max-steps", "1")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode != 0
    lines = _error_lines(run.stderr)
    assert lines == [f"{PREFIX}{data}: the release has no 'train' split (present: test)"], run.stderr
    assert "Traceback" not in run.stderr, run.stderr  # no worker died of the refusal elsewhere (e.g. at a barrier)
    if launch.startswith("python -m"):
        assert run.returncode == 2 and run.stderr.splitlines() == lines, run.stderr
    elif launch == "accelerate launch, 2 processes":  # the launcher's summary lists every worker's exit status
        statuses = [int(s) for s in re.findall(r"exitcode\s*:\s*(-?\d+)", run.stderr)]
        assert statuses and set(statuses) <= {2, -15}, run.stderr  # 2, or stopped by the launcher after the other's 2


def _launch_environment():
    return dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


@pytest.mark.slow
def test_num_processes_trains_as_that_many_processes_and_exits_0(release_dir, tmp_path):
    out = tmp_path / "two"
    run = subprocess.run(
        [
            *[sys.executable, "-m", "pisa_model.train", "--num-processes", "2", "--cpu"],
            *_args(release_dir, out, "--max-steps", "2"),
        ],
        env=_launch_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    # --batch-size 1 per process: a step of 2 rows is two processes' micro-batches.
    assert "2 process(es); 2 rows per step" in run.stderr, run.stderr
    assert _steps(out) == [1, 2]
    assert os.path.isfile(out / "model.safetensors")


def test_a_launch_whose_processes_failed_exits_with_their_status():
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from pisa_model.launch import processes_status

    def failure(rank, exitcode):
        return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file="<N/A>")

    # The main process refused (2) and the launcher then stopped the other (SIGTERM): the refusal's status.
    assert processes_status("prog", {0: failure(0, 2), 1: failure(1, -15)}) == 2
    # Processes that exited with different statuses: the lowest rank's.
    assert processes_status("prog", {1: failure(1, 2), 2: failure(2, 1)}) == 2


def test_a_launch_whose_processes_were_all_killed_says_so_in_one_line(capsys):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from pisa_model.launch import processes_status

    failures = {rank: ProcessFailure(rank, 1000 + rank, -signal, "<N/A>") for rank, signal in ((1, 15), (0, 9))}
    assert processes_status("prog", failures) == 1
    assert capsys.readouterr().err == "prog: error: process 0 was killed by SIGKILL\n"


def test_num_processes_under_another_launch_must_match_it(release_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "1")  # as a launcher sets it in the one process it started
    assert train_main([*_args(release_dir, tmp_path / "out", "--max-steps", "1"), "--num-processes", "2"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        f"{PREFIX}--num-processes 2: this process is one of 1 started by a launcher "
        "(leave --num-processes out under accelerate launch)"
    ]


# --- fidelity of training to LISA (issue 18 item 7) ------------------------------------------------------------


def _tiny_batch(processor, count=2):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 255, (40 + 8 * k, 48, 3), dtype=np.uint8)) for k in range(count)]
    masks = [np.zeros((image.height, image.width), dtype=bool) for image in images]
    return processor(images=images, text=["the handle to pick it up"] * count, masks=masks)


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_gradient_checkpointing_keeps_the_frozen_vision_tower_out_of_backward(lora_rank):
    import torch

    from pisa_model.tiny import tiny_pisa

    model, processor = tiny_pisa(seed=0, lora_rank=lora_rank)
    model.train()
    model.activation_checkpointing_enable()
    frozen = {"vision tower": model.llava.model.vision_tower, "projector": model.llava.model.multi_modal_projector}
    outputs_need_grad, saved, inside = {}, {}, []

    def enter(name):
        return lambda module, args: inside.append(name)

    def leave(name):
        def hook(module, args, output):
            inside.pop()
            tensor = output if isinstance(output, torch.Tensor) else output[0]
            outputs_need_grad[name] = tensor.requires_grad

        return hook

    for name, module in frozen.items():
        module.register_forward_pre_hook(enter(name))
        module.register_forward_hook(leave(name))

    def pack(tensor):  # every tensor autograd keeps for backward while a frozen tower runs, each storage once
        if inside:
            saved.setdefault(inside[-1], set()).add(tensor.untyped_storage().data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**model.prepare_inputs(_tiny_batch(processor))).loss
    loss.backward()
    assert outputs_need_grad == {"vision tower": False, "projector": False}
    assert saved == {}
    assert all(p.grad is None for module in frozen.values() for p in module.parameters())
    # Gradients still reach what is trained (the token embeddings, LoRA adapters, the mask decoder).
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_merged_lora_checkpoint_keeps_lora_or_is_refused_not_fully_fine_tuned(release_dir, tmp_path, capsys):
    from pisa_model.assembly import save_merged
    from pisa_model.tiny import tiny_pisa

    lora, processor = tiny_pisa(seed=0, lora_rank=2)
    lora.processor = processor
    merged = str(tmp_path / "merged")
    save_merged(lora, merged)
    capsys.readouterr()  # its progress bar
    expected_trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    full, _ = tiny_pisa(seed=0)
    full_trainable = sum(p.numel() for p in full.parameters() if p.requires_grad)
    assert expected_trainable < full_trainable
    start = ["--data-dir", release_dir, *FAST[2:], "--max-steps", "1", "--init-from", merged]

    # Without a LoRA setting: refused in one line, before any work.
    assert train_main([*start, "--output-dir", str(tmp_path / "refused")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "\r" not in line and line.strip()]
    assert (
        len(lines) == 1
        and lines[0].startswith(PREFIX)
        and f"--init-from {merged}: its language model has no LoRA adapters" in lines[0]
    ), lines
    assert not os.path.exists(tmp_path / "refused" / "model.safetensors")

    # With --lora-rank 2: new adapters on the merged weights, as many trainable parameters as the LoRA model had.
    out = train([*start, "--output-dir", str(tmp_path / "lora"), "--lora-rank", "2"])
    assert f"{expected_trainable:,} trainable parameters" in capsys.readouterr().err
    from pisa_model import PisaForPartSegmentation

    assert PisaForPartSegmentation.from_pretrained(out).config.lora_rank == 2
    # --lora-rank 0 says full fine-tuning explicitly.
    train([*start, "--output-dir", str(tmp_path / "full"), "--lora-rank", "0"])
    assert f"{full_trainable:,} trainable parameters" in capsys.readouterr().err


def test_the_pisa_adapter_records_seg_by_the_token_id_that_decides_the_mask(monkeypatch):
    # A tokenizer may spell "[SEG]" in pieces (a generated answer then reads "[SEG]" but holds no [SEG] token and
    # gets the empty mask), or the token may decode to other text: the record must follow the id, as the mask does.
    import numpy as np
    import torch
    from PIL import Image

    from pisa_model.adapters.pisa import PisaAdapter
    from pisa_model.tiny import tiny_pisa

    model, processor = tiny_pisa(seed=0)
    model.processor = processor
    tokenizer = processor.tokenizer
    seg_id = model.config.seg_token_id
    sure = tokenizer("sure", add_special_tokens=False)["input_ids"]
    answers = {"pieces": sure + sure, "token": sure + [seg_id]}  # generated ids, as the language model gives them
    real_decode = tokenizer.decode

    def generate(input_ids, **kwargs):  # row 0 answers without the token, row 1 with it
        rows = [list(row) + answers[name] + [tokenizer.eos_token_id] for row, name in zip(input_ids.tolist(), answers)]
        width = max(map(len, rows))
        return torch.tensor([row + [tokenizer.eos_token_id] * (width - len(row)) for row in rows])

    def decode(ids, **kwargs):  # the first answer spells "[SEG]" in pieces, the second shows the token otherwise
        return {tuple(answers["pieces"]): "sure [SEG]", tuple(answers["token"]): "sure <seg>"}.get(
            tuple(ids), real_decode(ids, **kwargs)
        )

    monkeypatch.setattr(model.llava, "generate", generate)
    monkeypatch.setattr(tokenizer, "decode", decode)
    images = [Image.fromarray(np.full((32, 40, 3), 120, dtype=np.uint8))] * 2
    masks, records = PisaAdapter(model, generate=True).predict_with_extras(images, ["the handle"] * 2)
    assert [record["answer"] for record in records] == ["sure [SEG]", "sure <seg>"]
    assert [record["has_seg"] for record in records] == [False, True]
    assert not masks[0].any()  # no [SEG] token: the empty mask, whatever the text says
