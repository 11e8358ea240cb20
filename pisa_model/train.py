"""Train PISA on InstructPart under Accelerate.

    accelerate launch -m pisa_model.train --data-dir RELEASE --output-dir OUT \\
        --from-components llava-hf/llava-1.5-7b-hf,facebook/dinov2-large,facebook/sam-vit-huge \\
        --config trps,orps --split train --lora-rank 8 --mixed-precision bf16 \\
        --batch-size 2 --grad-accum 10 --max-steps 5000 --save-steps 500

    python -m pisa_model.train --data-dir RELEASE --output-dir OUT --init-from tiny --max-steps 200

Starting points: `--init-from tiny` (the tiny random model of `pisa_model.tiny`), `--from-components
LLAVA,DINOV2,SAM` (pretrained parts), or `--init-from PATH` (a saved PISA checkpoint). `--resume-from
OUT/checkpoints/checkpoint-N` (or `latest`) continues a run exactly: model, optimizer, scheduler, RNG states and
the position in the data stream. A resume takes the settings recorded in the checkpoint (`RUN_SETTINGS`: leave
them out); one given with another value is refused, naming it, as is a checkpoint already past `--max-steps`.

One run per output folder: a run holds an advisory lock on OUT (`flock`, released by the kernel when the process
ends, however it ends), and a fresh run refuses an OUT that holds another run's checkpoints, metrics or model
unless `--overwrite-output-dir` (which removes the old checkpoints and metrics first). A run resuming from one
of OUT's own checkpoints continues there, dropping the metrics logged after that checkpoint.

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
import time

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one run per folder is then the user's business
    fcntl = None

import torch
from torch.utils.data import DataLoader, Sampler

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
# What a resume must keep to continue exactly: recorded in every checkpoint, adopted when left out, refused when
# given with another value. (max_steps too, unless the learning-rate schedule ignores it.)
RUN_SETTINGS = (
    "init_from",
    "from_components",
    "init_from_lisa",
    "config",
    "split",
    "batch_size",
    "grad_accum",
    "lr",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler",
    "max_grad_norm",
    "mixed_precision",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "feature_fusion",
    "mask_input_size",
    "dinov2_layers",
    "seed",
    "max_steps",
)
SCHEDULERS_WITHOUT_HORIZON = ("constant", "constant_with_warmup")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pisa_model.train", description="Train PISA on InstructPart under Accelerate."
    )
    parser.add_argument("--data-dir", required=True, help="release folder, exported dataset folder or Hub dataset id")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--init-from", default=None, help="'tiny' or a saved PISA checkpoint folder / Hub id")
    parser.add_argument("--from-components", default=None, metavar="LLAVA,DINOV2,SAM", help="pretrained parts")
    parser.add_argument(
        "--init-from-lisa",
        default=None,
        metavar="DIR",
        help="with --from-components DINOV2: start from a converted LISA (python -m pisa_model.convert_lisa): its "
        "language model, projector, [SEG] row, text projection and mask decoder; DINOv2 and the neck start fresh",
    )
    parser.add_argument("--tiny", action="store_true", help="same as --init-from tiny")
    parser.add_argument("--config", default="trps,orps", help="comma-separated InstructPart configs (trps, orps)")
    parser.add_argument("--split", default="train", help="train, train200, train600, train1200 or train1800")
    parser.add_argument("--batch-size", type=int, default=2, help="rows per process per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=10, help="micro-batches per optimizer step")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (a resume: the run's own)")
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
    parser.add_argument(
        "--lora-rank",
        type=int,
        default=None,
        help="LoRA rank on the language model (new models only); default: LISA's 8 with --from-components, 0 "
        "with --init-from tiny; 0 = full fine-tuning of the language model",
    )
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--lora-target-modules", default="q_proj,v_proj", help="comma-separated module names")
    parser.add_argument("--feature-fusion", default="sum", choices=("sum", "concat"), help="new models only")
    parser.add_argument(
        "--mask-input-size", type=int, default=None, help="--from-components only (default 896: SAM's 64x64 grid)"
    )
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
    parser.add_argument(
        "--overwrite-output-dir",
        action="store_true",
        help="start a fresh run in an OUTPUT_DIR that holds another run's checkpoints (they are removed)",
    )
    parser.add_argument("--log-steps", type=int, default=10)
    parser.add_argument(
        "--report-to", default=None, help="accelerate tracker(s): tensorboard, wandb, ... (comma-separated)"
    )
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed command line; `given` lists the options the user wrote (a resume adopts the others)."""
    args = build_parser().parse_args(argv)
    # argparse fills in a default only where the namespace has no value yet: pre-filled markers survive exactly
    # where the user gave nothing.
    unset = object()
    probe = build_parser().parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(vars(args), unset)))
    args.given = sorted(name for name, value in vars(probe).items() if value is not unset)
    return args


def _given_options(args) -> set:
    if getattr(args, "given", None) is not None:
        return set(args.given)
    defaults = vars(build_parser().parse_args(["--data-dir", "-", "--output-dir", "-"]))
    return {name for name, value in vars(args).items() if name in defaults and value != defaults[name]}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_main_rank() -> bool:
    """Rank 0 of the launch, known before Accelerate starts (torchrun tears the other ranks down if it fails)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


@contextlib.contextmanager
def _output_dir_lock(folder: str, enabled: bool = True):
    """Hold an exclusive advisory lock on the output folder itself for the run: a second run into it fails at
    once, and a crashed run leaves nothing stuck (the kernel drops the lock with the process)."""
    if not enabled or fcntl is None:
        yield
        return
    os.makedirs(folder, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(
                f"{folder}: another pisa_model.train run is writing there (one run per output folder: "
                "wait for it to end or choose another --output-dir)"
            ) from None
        yield
    finally:
        os.close(handle)


def _previous_run_files(output_dir: str) -> list:
    """What an earlier run left in `output_dir`: checkpoints, its metrics log, its final model."""
    found = []
    folder = os.path.join(output_dir, CHECKPOINTS)
    if os.path.isdir(folder) and any(name.startswith("checkpoint-") for name in os.listdir(folder)):
        found.append(os.path.join(CHECKPOINTS, ""))
    for name in (METRICS_FILE, "model.safetensors", "model.safetensors.index.json"):
        if os.path.exists(os.path.join(output_dir, name)):
            found.append(name)
    return found


def _prepare_output_dir(args, resume) -> None:
    """Refuse an output folder holding another run (unless --overwrite-output-dir, which clears it)."""
    own_checkpoint = resume is not None and os.path.realpath(resume).startswith(
        os.path.realpath(os.path.join(args.output_dir, CHECKPOINTS)) + os.sep
    )
    if args.overwrite_output_dir and own_checkpoint:
        raise ValueError(
            f"--overwrite-output-dir would delete {resume}, the checkpoint to resume from: leave one of them out"
        )
    previous = _previous_run_files(args.output_dir)
    if not previous or own_checkpoint:
        return
    if not args.overwrite_output_dir:
        raise ValueError(
            f"{args.output_dir} holds another run ({', '.join(previous)}): resume it with --resume-from latest, "
            "choose another --output-dir, or pass --overwrite-output-dir to start over there"
        )
    shutil.rmtree(os.path.join(args.output_dir, CHECKPOINTS), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(args.output_dir, METRICS_FILE))


def _adopt_run_settings(args, given: set, state: dict, checkpoint: str) -> None:
    """Continue with the settings `checkpoint` was trained with: adopt those left out, refuse changed ones."""
    step = int(state["step"])
    if args.max_steps is not None and "max_steps" in given and step > args.max_steps:
        raise ValueError(
            f"{checkpoint} is at step {step}, past --max-steps {args.max_steps}: there is nothing left to train"
        )
    recorded = dict(state.get("settings") or {})
    if not recorded and "seed" in state:  # checkpoints written before the settings were recorded
        recorded = {"seed": state["seed"]}
    for name in RUN_SETTINGS:
        if name not in recorded:
            continue
        value = getattr(args, name)
        schedule_ignores_it = name == "max_steps" and recorded.get("lr_scheduler") in SCHEDULERS_WITHOUT_HORIZON
        if name in given and value != recorded[name] and not schedule_ignores_it:
            raise ValueError(
                f"{_flag(name)} {value} differs from the {recorded[name]} that {checkpoint} was trained with: a "
                f"resume continues exactly with the run's own settings (leave {_flag(name)} out)"
            )
        if name not in given:
            setattr(args, name, recorded[name])
    if args.max_steps is not None and step > args.max_steps:
        raise ValueError(
            f"{checkpoint} is at step {step}, past --max-steps {args.max_steps}: there is nothing left to train"
        )


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drop the log lines after `last_step` (written by the run that was interrupted after that checkpoint)."""
    from instructpart_dataset.toolbox.files import write_text_atomic

    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= last_step]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(kept))


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


# The dtype of the frozen parts for each --mixed-precision; trainable parameters stay float32 (master weights).
COMPUTE_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _apply_lisa_defaults(args):
    """LISA's recipe for pretrained parts (LoRA r=8 on q_proj/v_proj): full fine-tuning of the 6.7 B language model
    does not fit an 80 GB GPU, so it is only done when asked (`--lora-rank 0`)."""
    if args.lora_rank is None:
        args.lora_rank = 8 if args.from_components else 0
    if args.mask_input_size is None:
        from .configuration_pisa import DEFAULT_MASK_INPUT_SIZE

        args.mask_input_size = DEFAULT_MASK_INPUT_SIZE
    return args


def _lora_options(args) -> dict:
    targets = [t.strip() for t in args.lora_target_modules.split(",") if t.strip()]
    if not targets:
        raise ValueError("--lora-target-modules names no module")
    return {
        "lora_rank": args.lora_rank,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "lora_target_modules": targets,
    }


def _build_model(args):
    """(model, processor, how it was built), its parameters following the dtype policy of --mixed-precision."""
    from .modeling_pisa import PisaForPartSegmentation

    compute_dtype = COMPUTE_DTYPES[args.mixed_precision]
    init_from = "tiny" if args.tiny else args.init_from
    if args.from_components:
        from .assembly import from_components, from_lisa

        parts = [p.strip() for p in args.from_components.split(",")]
        layers = [int(i) for i in args.dinov2_layers.split(",")] if args.dinov2_layers else None
        options = dict(
            dinov2_feature_layers=layers,
            feature_fusion=args.feature_fusion,
            mask_input_size=args.mask_input_size,
            dtype=compute_dtype,
            **_lora_options(args),
        )
        if args.init_from_lisa:
            if len(parts) != 1 or not parts[0]:
                raise ValueError(
                    "with --init-from-lisa, --from-components names DINOV2 alone (the language model and SAM's parts "
                    f"come from LISA), got {args.from_components!r}"
                )
            if not os.path.isdir(args.init_from_lisa):
                raise FileNotFoundError(f"--init-from-lisa {args.init_from_lisa}: no such folder")
            model = from_lisa(args.init_from_lisa, parts[0], **options)
            origin = f"LISA {args.init_from_lisa} + DINOv2 {parts[0]}"
        else:
            if len(parts) != 3 or not all(parts):
                raise ValueError(f"--from-components takes LLAVA,DINOV2,SAM, got {args.from_components!r}")
            model = from_components(*parts, **options)
            origin = f"components {args.from_components}"
        processor = model.processor
    elif init_from == "tiny":
        from .tiny import tiny_pisa

        model, processor = tiny_pisa(args.seed, feature_fusion=args.feature_fusion, **_lora_options(args))
        origin = "tiny random model"
    else:
        if not os.path.exists(init_from) and os.path.sep in init_from.rstrip(os.path.sep):
            raise FileNotFoundError(f"--init-from {init_from}: no such checkpoint folder")
        model = PisaForPartSegmentation.from_pretrained(init_from)
        model, processor, origin = model, model.get_processor(), f"checkpoint {init_from}"
    model.apply_dtype_policy(compute_dtype)
    return model, processor, origin


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
        state = {
            "step": step,
            "seed": args.seed,
            "rows_per_step": stream.per_step,
            "num_rows": stream.num_rows,
            "settings": {name: getattr(args, name) for name in RUN_SETTINGS},
        }
        with open(os.path.join(partial, STATE_FILE), "w") as f:
            json.dump(state, f)
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
    if args.max_steps is None:
        raise ValueError("--max-steps is required (a resume takes the run's own)")
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
    if args.init_from_lisa and not args.from_components:
        raise ValueError("--init-from-lisa DIR goes with --from-components DINOV2 (DINOv2 is not in LISA)")


def _speed_and_memory(steps, rows_per_step, started, device) -> str:
    """The closing line: training rows per second (all processes) and this process's peak GPU memory."""
    seconds = time.perf_counter() - started
    line = f"{steps} steps in {seconds:.1f} s, {steps * rows_per_step / max(seconds, 1e-9):.2f} samples/s"
    if device.type == "cuda":
        line += f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (process 0)"
    return line


def train(args) -> str:
    """Run training as configured by `args` (an argparse Namespace from `parse_args()`, or a list of CLI
    arguments); returns the output folder holding the final model. Refusals (ValueError / OSError, one line)
    come before any file is written."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(list(args))
    given = _given_options(args)
    if args.tiny and not args.init_from:  # one spelling of the starting point, as recorded in checkpoints
        args.init_from, args.tiny = "tiny", False
        given.add("init_from")
    resume = resume_state = None
    if args.resume_from:
        resume = _latest_checkpoint(args.output_dir) if args.resume_from == "latest" else args.resume_from
        if not os.path.isdir(resume):
            raise FileNotFoundError(f"--resume-from {resume}: no such checkpoint folder")
        resume_state = _read_state(resume)
        _adopt_run_settings(args, given, resume_state, resume)
    _apply_lisa_defaults(args)  # after the resume's adoption: a recorded setting wins over the default
    _check_args(args)
    main_rank = _is_main_rank()
    with _output_dir_lock(args.output_dir, enabled=main_rank):
        if main_rank:
            _prepare_output_dir(args, resume)
        return _train(args, resume, resume_state)


def _train(args, resume, resume_state) -> str:
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

    with accelerator.main_process_first():
        rows = load_rows(args.data_dir, configs=configs, split=args.split)
    _check_rows(args, len(rows), accelerator.num_processes, resume, resume_state)
    model, processor, origin = _build_model(args)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    model.train()

    trainable = [p for p in model.parameters() if p.requires_grad]
    low_precision = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if low_precision:  # apply_dtype_policy makes this impossible; AdamW on fp16 weights would silently diverge
        raise ValueError(f"trainable parameter {low_precision[0]} is {model.get_parameter(low_precision[0]).dtype}")
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
    elif accelerator.is_main_process:
        _truncate_metrics(metrics_path, start_step)
    bar = tqdm(
        total=args.max_steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=args.no_progress or not accelerator.is_local_main_process,
    )
    running = {}
    started = time.perf_counter()
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
    if accelerator.is_main_process:
        speed = _speed_and_memory(args.max_steps - start_step, stream.per_step, started, accelerator.device)
        print(f"pisa_model.train: trained {speed}", file=sys.stderr)

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


def _check_rows(args, num_rows: int, num_processes: int, resume, state) -> None:
    """A micro-batch must not repeat rows; a resume must see the rows and step size it was trained with."""
    if args.batch_size * num_processes > num_rows:
        raise ValueError(
            f"--batch-size {args.batch_size} x {num_processes} process(es) is more than the {num_rows} rows of "
            f"{args.config} / {args.split}: every batch would repeat rows (use --batch-size <= "
            f"{max(1, num_rows // num_processes)} and --grad-accum for larger steps)"
        )
    if resume is None:
        return
    if "num_rows" in state and int(state["num_rows"]) != num_rows:
        raise ValueError(
            f"{args.data_dir} gives {num_rows} rows of {args.config} / {args.split}, {resume} was trained on "
            f"{state['num_rows']}: a resume needs the same data"
        )
    per_step = args.batch_size * args.grad_accum * num_processes
    if "rows_per_step" in state and int(state["rows_per_step"]) != per_step:
        raise ValueError(
            f"{resume} was trained with {state['rows_per_step']} rows per step, this launch gives {per_step} "
            f"({num_processes} process(es)): resume with the run's number of processes"
        )


def main(argv=None) -> int:
    from instructpart_dataset.toolbox.cli_errors import check_writable, run_command

    args = parse_args(argv)

    def checked_train():
        check_writable(args.output_dir, folder=True)  # before the training, not after it
        train(args)

    return run_command(build_parser().prog, checked_train)


if __name__ == "__main__":
    sys.exit(main())
