"""pisa_model.train: a run saves a loadable checkpoint, resumes exactly, refuses bad input in one line."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from pisa_model import PisaForPartSegmentation
from pisa_model.train import StepStreamSampler, main, train

COMMON = [
    "--init-from",
    "tiny",
    "--batch-size",
    "2",
    "--grad-accum",
    "2",
    "--lr",
    "1e-3",
    "--warmup-steps",
    "2",
    "--log-steps",
    "1",
    "--no-progress",
    "--config",
    "trps,orps",
]


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def _log(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_stream_sampler_covers_each_epoch_once_and_splits_steps_between_processes():
    rows, batch, accum = 10, 2, 3
    single = StepStreamSampler(rows, seed=3, batch_size=batch, grad_accum=accum)
    stream = iter(single)
    first_epochs = [next(stream) for _ in range(20)]
    assert sorted(first_epochs[:10]) == list(range(10)) and sorted(first_epochs[10:]) == list(range(10))
    assert first_epochs[:10] != first_epochs[10:]  # a new permutation each epoch
    # Two processes: step s of the global stream is rank 0's slice then rank 1's slice.
    ranks = [iter(StepStreamSampler(rows, 3, batch, accum, rank=r, num_processes=2)) for r in range(2)]
    global_order = iter(StepStreamSampler(rows, 3, batch * 2, accum))  # same rows per step, one process
    for _ in range(4):
        expected = [next(global_order) for _ in range(2 * batch * accum)]
        got = [next(ranks[0]) for _ in range(batch * accum)] + [next(ranks[1]) for _ in range(batch * accum)]
        assert got == expected
    # Starting at step 5 is the uninterrupted stream from position 5 * rows_per_step.
    skip = 5 * batch * accum
    full = _take(StepStreamSampler(rows, 3, batch, accum), skip + 12)
    assert _take(StepStreamSampler(rows, 3, batch, accum, start_step=5), 12) == full[skip:]


def _take(sampler, count):
    stream = iter(sampler)
    return [next(stream) for _ in range(count)]


def test_train_saves_a_checkpoint_that_loads_and_logs_metrics(release_dir, tmp_path):
    out = train(["--data-dir", release_dir, "--output-dir", str(tmp_path / "run"), "--max-steps", "3", *COMMON])
    assert out == str(tmp_path / "run")
    model = PisaForPartSegmentation.from_pretrained(out)
    assert model.get_processor().seg_token_id == model.config.seg_token_id
    lines = _log(out)
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert all({"loss", "lm_loss", "mask_bce_loss", "mask_dice_loss", "lr"} <= set(line) for line in lines)
    # Training changed the trainable weights and left the frozen ones alone.
    from pisa_model.tiny import tiny_pisa

    start, _ = tiny_pisa(seed=0)
    trained = _weights(out)
    assert torch.equal(
        trained["dinov2.embeddings.patch_embeddings.projection.weight"],
        start.state_dict()["dinov2.embeddings.patch_embeddings.projection.weight"],
    )
    assert not torch.equal(trained["text_projection.fc1.weight"], start.state_dict()["text_projection.fc1.weight"])


def test_resume_continues_exactly(release_dir, tmp_path):
    # A 4-step run that checkpoints at step 2; resuming from that checkpoint elsewhere must end where it ended.
    # LoRA's dropout makes the result depend on the restored random state too.
    lora = ["--lora-rank", "2"]
    straight = train(
        [
            "--data-dir",
            release_dir,
            "--output-dir",
            str(tmp_path / "straight"),
            "--max-steps",
            "4",
            "--save-steps",
            "2",
            *COMMON,
            *lora,
        ]
    )
    checkpoint = os.path.join(straight, "checkpoints", "checkpoint-2")
    assert sorted(os.listdir(os.path.join(straight, "checkpoints"))) == ["checkpoint-2", "checkpoint-4"]
    resumed = train(
        [
            "--data-dir",
            release_dir,
            "--output-dir",
            str(tmp_path / "resumed"),
            "--max-steps",
            "4",
            "--resume-from",
            checkpoint,
            *COMMON,
            *lora,
        ]
    )
    a, b = _weights(straight), _weights(resumed)
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    straight_log, resumed_log = _log(straight), _log(resumed)
    assert [line["step"] for line in resumed_log] == [3, 4] and resumed_log == straight_log[2:]


def test_bad_input_exits_with_one_line(release_dir, tmp_path, capsys):
    cases = [
        (["--config", "nope"], "unknown config 'nope'"),
        (["--split", "valid"], "unknown split 'valid'"),
        (["--resume-from", str(tmp_path / "missing")], "no such checkpoint folder"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--from-components", "a,b,c"], "choose one starting point"),
    ]
    for extra, message in cases:
        argv = ["--data-dir", release_dir, "--output-dir", str(tmp_path / "bad"), "--max-steps", "1", *COMMON, *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("python -m pisa_model.train: error:") and message in err[-1], err
    assert (
        main(["--data-dir", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "bad"), "--max-steps", "1"]) == 2
    )
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_same_global_batch(release_dir, tmp_path):
    # ACCELERATE_USE_CPU + --multi_gpu runs two real processes on CPU (`--cpu` would silently run one). Each
    # takes its half of every step's rows and DDP averages the gradients: with per-row losses averaged per
    # process (the LM loss covers the same answer tokens in every row), that is one process on twice the batch.
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, ACCELERATE_USE_CPU="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    args = [
        "--data-dir",
        release_dir,
        "--init-from",
        "tiny",
        "--max-steps",
        "3",
        "--grad-accum",
        "2",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "1",
        "--log-steps",
        "1",
        "--no-progress",
    ]
    two = str(tmp_path / "two")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "pisa_model.train",
            "--output-dir",
            two,
            "--batch-size",
            "2",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es)" in run.stderr
    one = train(["--output-dir", str(tmp_path / "one"), "--batch-size", "4", *args])
    a, b = _weights(one), _weights(two)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    for x, y in zip(_log(one), _log(two)):
        assert x.keys() == y.keys() and all(abs(x[k] - y[k]) < 1e-5 for k in x)
