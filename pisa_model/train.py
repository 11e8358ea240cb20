"""Train PISA on InstructPart under Accelerate.

    accelerate launch -m pisa_model.train --data-dir RELEASE --output-dir OUT \\
        --from-components llava-hf/llava-1.5-7b-hf,facebook/dinov2-large,facebook/sam-vit-huge \\
        --config trps,orps --split train --lora-rank 8 --mixed-precision bf16 \\
        --batch-size 2 --grad-accum 10 --max-steps 5000 --save-steps 500

    python -m pisa_model.train --data-dir RELEASE --output-dir OUT --init-from tiny --max-steps 200

Starting points: `--init-from tiny` (the tiny random model of `pisa_model.testing`), `--from-components
LLAVA,DINOV2,SAM` (pretrained parts), or `--init-from PATH` (a saved PISA checkpoint). `--resume-from
OUT/checkpoints/checkpoint-N` (or `latest`) continues a run exactly: model, optimizer, scheduler, RNG states and
the position in the data stream.

The data stream is defined in optimizer steps: step s uses samples [s*G, (s+1)*G) of an endless sequence of
seeded per-epoch permutations of the rows (G = batch size x accumulation x processes; process r takes the r-th
slice). A checkpoint therefore resumes at a position, whatever the epoch boundaries, and every row is seen once
per epoch. The final model (with its processor and custom code) is saved to OUT; `train()` returns OUT.
"""

import argparse
import contextlib
import json
import os
import shutil
import sys

import torch
from torch.utils.data import DataLoader, Sampler

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pisa_model.train", description="Train PISA on InstructPart under Accelerate."
    )
    parser.add_argument("--data-dir", required=True, help="release folder, exported dataset folder or Hub dataset id")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--init-from", default=None, help="'tiny' or a saved PISA checkpoint folder / Hub id")
    parser.add_argument("--from-components", default=None, metavar="LLAVA,DINOV2,SAM", help="pretrained parts")
    parser.add_argument("--tiny", action="store_true", help="same as --init-from tiny")
    parser.add_argument("--config", default="trps,orps", help="comma-separated InstructPart configs (trps, orps)")
    parser.add_argument("--split", default="train", help="train, train200, train600, train1200 or train1800")
    parser.add_argument("--batch-size", type=int, default=2, help="rows per process per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=10, help="micro-batches per optimizer step")
    parser.add_argument("--max-steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument(
        "--lr-scheduler",
        default="linear",
        help="a transformers scheduler name (linear, cosine, constant_with_warmup, ...)",
    )
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on the language model (new models only)")
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--feature-fusion", default="sum", choices=("sum", "concat"), help="new models only")
    parser.add_argument("--mask-input-size", type=int, default=448, help="--from-components only")
    parser.add_argument(
        "--dinov2-layers", default=None, help="comma-separated DINOv2 hidden-state indices (--from-components)"
    )
    parser.add_argument(
        "--save-steps", type=int, default=0, help="save a resumable checkpoint every N steps (0: never)"
    )
    parser.add_argument("--save-total-limit", type=int, default=0, help="keep only the newest N checkpoints (0: all)")
    parser.add_argument(
        "--resume-from", default=None, help="a checkpoint folder, or 'latest' in OUTPUT_DIR/checkpoints"
    )
    parser.add_argument("--log-steps", type=int, default=10)
    parser.add_argument(
        "--report-to", default=None, help="accelerate tracker(s): tensorboard, wandb, ... (comma-separated)"
    )
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    return parser


class StepStreamSampler(Sampler):
    """This process's row indices from `start_step` on: an endless stream of seeded per-epoch permutations, cut
    into global steps of `batch_size * grad_accum * num_processes` rows, of which process `rank` takes its slice."""

    def __init__(self, num_rows, seed, batch_size, grad_accum, rank=0, num_processes=1, start_step=0):
        if num_rows < 1:
            raise ValueError("no training rows")
        self.num_rows, self.seed = num_rows, seed
        self.per_process = batch_size * grad_accum
        self.per_step = self.per_process * num_processes
        self.rank, self.start_step = rank, start_step

    def _permutation(self, epoch):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_rows, generator=generator).tolist()

    def __iter__(self):
        step = self.start_step
        epoch, order = -1, []
        while True:
            begin = step * self.per_step + self.rank * self.per_process
            for position in range(begin, begin + self.per_process):
                if position // self.num_rows != epoch:
                    epoch = position // self.num_rows
                    order = self._permutation(epoch)
                yield order[position % self.num_rows]
            step += 1


def _build_model(args):
    """(model, processor, how it was built)."""
    from .modeling_pisa import PisaForPartSegmentation

    init_from = "tiny" if args.tiny else args.init_from
    if args.from_components:
        parts = [p.strip() for p in args.from_components.split(",")]
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"--from-components takes LLAVA,DINOV2,SAM, got {args.from_components!r}")
        layers = [int(i) for i in args.dinov2_layers.split(",")] if args.dinov2_layers else None
        model = PisaForPartSegmentation.from_components(
            *parts,
            dinov2_feature_layers=layers,
            feature_fusion=args.feature_fusion,
            mask_input_size=args.mask_input_size,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
        )
        return model, model.processor, f"components {args.from_components}"
    if init_from == "tiny":
        from .testing import tiny_pisa

        model, processor = tiny_pisa(
            args.seed, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, feature_fusion=args.feature_fusion
        )
        return model, processor, "tiny random model"
    if not os.path.exists(init_from) and os.path.sep in init_from.rstrip(os.path.sep):
        raise FileNotFoundError(f"--init-from {init_from}: no such checkpoint folder")
    model = PisaForPartSegmentation.from_pretrained(init_from)
    return model, model.get_processor(), f"checkpoint {init_from}"


def _latest_checkpoint(output_dir):
    folder = os.path.join(output_dir, CHECKPOINTS)
    steps = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            number = name[len("checkpoint-") :]
            if (
                name.startswith("checkpoint-")
                and number.isdigit()
                and os.path.isfile(os.path.join(folder, name, STATE_FILE))
            ):
                steps.append(int(number))
    if not steps:
        raise FileNotFoundError(f"--resume-from latest: no complete checkpoint under {folder}")
    return os.path.join(folder, f"checkpoint-{max(steps)}")


def _read_state(checkpoint):
    path = os.path.join(checkpoint, STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{checkpoint}: not a training checkpoint ({STATE_FILE} missing)")
    try:
        with open(path) as f:
            state = json.load(f)
        int(state["step"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: malformed training state ({error})") from None
    return state


def _save_checkpoint(accelerator, args, step, stream):
    folder = os.path.join(args.output_dir, CHECKPOINTS, f"checkpoint-{step}")
    partial = folder + ".partial"
    if accelerator.is_main_process and os.path.isdir(partial):
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(partial, STATE_FILE), "w") as f:
            json.dump({"step": step, "seed": args.seed, "rows_per_step": stream.per_step}, f)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(partial, folder)  # a checkpoint exists complete or not at all
        if args.save_total_limit > 0:
            root = os.path.join(args.output_dir, CHECKPOINTS)
            done = sorted(
                int(n.split("-")[1])
                for n in os.listdir(root)
                if n.startswith("checkpoint-") and n.split("-")[1].isdigit()
            )
            for old in done[: -args.save_total_limit]:
                shutil.rmtree(os.path.join(root, f"checkpoint-{old}"), ignore_errors=True)
    accelerator.wait_for_everyone()


def _check_args(args):
    for name in ("batch_size", "grad_accum", "max_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("save_steps", "warmup_steps", "log_steps", "num_workers", "lora_rank", "save_total_limit"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    # A path that looks local must exist; anything else may be a Hub dataset id.
    if not os.path.exists(args.data_dir) and args.data_dir.startswith((".", os.path.sep, "~")):
        raise FileNotFoundError(f"--data-dir {args.data_dir}: no such folder")
    if sum(map(bool, (args.tiny, args.init_from, args.from_components))) != 1:
        raise ValueError("choose one starting point: --init-from tiny|CHECKPOINT (or --tiny), or --from-components")


def train(args) -> str:
    """Run training as configured by `args` (an argparse Namespace from `build_parser()`, or a list of CLI
    arguments); returns the output folder holding the final model."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(list(args))
    _check_args(args)
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from .data import PisaCollator, load_rows, parse_configs

    configs = parse_configs(args.config)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=[t.strip() for t in args.report_to.split(",")] if args.report_to else None,
        project_dir=args.output_dir,
    )
    set_seed(args.seed)
    resume = None
    if args.resume_from:
        resume = _latest_checkpoint(args.output_dir) if args.resume_from == "latest" else args.resume_from
        if not os.path.isdir(resume):
            raise FileNotFoundError(f"--resume-from {resume}: no such checkpoint folder")
        resume_state = _read_state(resume)

    with accelerator.main_process_first():
        rows = load_rows(args.data_dir, configs=configs, split=args.split)
    model, processor, origin = _build_model(args)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    model.train()

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    # The prepared scheduler steps once per process per optimizer step: count in those units.
    scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_steps * accelerator.num_processes,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    start_step = int(resume_state["step"]) if resume else 0
    stream = StepStreamSampler(
        len(rows),
        args.seed,
        args.batch_size,
        args.grad_accum,
        accelerator.process_index,
        accelerator.num_processes,
        start_step,
    )
    loader = DataLoader(
        rows,
        batch_size=args.batch_size,
        sampler=stream,
        collate_fn=PisaCollator(processor, with_labels=True),
        num_workers=args.num_workers,
    )
    # Creating the iterator draws from torch's RNG: do it before load_state restores the saved RNG states, as the
    # uninterrupted run did before its first step, so that a resumed run continues with the same random stream.
    batches = iter(loader)
    if resume:
        accelerator.load_state(resume)
    unwrapped = accelerator.unwrap_model(model)

    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        n_trainable = sum(p.numel() for p in trainable)
        print(
            f"pisa_model.train: {origin}; {len(rows)} rows ({', '.join(configs)} / {args.split}); "
            f"{n_trainable:,} trainable parameters; {accelerator.num_processes} process(es); "
            f"{stream.per_step} rows per step; steps {start_step} -> {args.max_steps}",
            file=sys.stderr,
        )
    if args.report_to:
        accelerator.init_trackers("pisa_model.train", config={k: v for k, v in vars(args).items() if v is not None})

    metrics_path = os.path.join(args.output_dir, METRICS_FILE)
    if accelerator.is_main_process and start_step == 0 and os.path.exists(metrics_path):
        os.remove(metrics_path)
    bar = tqdm(
        total=args.max_steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=args.no_progress or not accelerator.is_local_main_process,
    )
    running = {}
    for step in range(start_step + 1, args.max_steps + 1):
        for micro in range(args.grad_accum):
            batch = next(batches)
            last = micro == args.grad_accum - 1
            # prepare() already wrapped forward in the mixed-precision autocast.
            with accelerator.no_sync(model) if not last else contextlib.nullcontext():
                outputs = model(**unwrapped.prepare_inputs(batch))
                loss = outputs.loss / args.grad_accum
            accelerator.backward(loss)
            for key in ("loss", "lm_loss", "mask_bce_loss", "mask_dice_loss"):
                value = getattr(outputs, key)
                if value is not None:
                    running[key] = running.get(key, 0.0) + float(value.detach()) / args.grad_accum
        if args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update(1)

        if args.log_steps and (step % args.log_steps == 0 or step == args.max_steps):
            span = args.log_steps if step % args.log_steps == 0 else step % args.log_steps
            averaged = torch.tensor([running.get(k, 0.0) for k in sorted(running)], device=accelerator.device) / span
            averaged = accelerator.reduce(averaged, reduction="mean")
            logs = dict(zip(sorted(running), averaged.tolist()))
            logs["lr"] = scheduler.get_last_lr()[0]
            running = {}
            bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
            accelerator.log(logs, step=step)
            if accelerator.is_main_process:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps({"step": step, **logs}) + "\n")
        if args.save_steps and step % args.save_steps == 0:
            _save_checkpoint(accelerator, args, step, stream)
    bar.close()

    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(model)
    final.processor = processor
    final.save_pretrained(
        args.output_dir,
        is_main_process=accelerator.is_main_process,
        state_dict=accelerator.get_state_dict(model),
    )
    accelerator.end_training()
    return args.output_dir


def main(argv=None) -> int:
    from instructpart_dataset.cli_errors import check_writable, run_command

    parser = build_parser()
    args = parser.parse_args(argv)

    def checked_train():
        check_writable(args.output_dir, folder=True)  # before the training, not after it
        train(args)

    return run_command(parser.prog, checked_train)


if __name__ == "__main__":
    sys.exit(main())
