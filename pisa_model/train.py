"""Train PISA on InstructPart under Accelerate.

    accelerate launch -m pisa_model.train --data-dir RELEASE --output-dir OUT \\
        --from-components llava-hf/llava-1.5-7b-hf,facebook/dinov2-large,facebook/sam-vit-huge \\
        --config trps,orps --split train --lora-rank 8 --mixed-precision bf16 \\
        --batch-size 2 --grad-accum 10 --max-steps 5000 --save-steps 500

    python -m pisa_model.train --data-dir RELEASE --output-dir OUT --init-from tiny --max-steps 200
    python -m pisa_model.train --num-processes 2 --cpu --data-dir RELEASE --output-dir OUT --init-from tiny

`--num-processes N` launches the N processes itself with accelerate launch's own launcher (`pisa_model.launch`) and
exits as they did, adding no launcher report: a refusal is one line and exit 2, as in one process (`accelerate
launch` exits 1 and adds its own report).

Starting points: `--init-from tiny` (the tiny random model of `pisa_model.tiny`), `--from-components
LLAVA,DINOV2,SAM` (pretrained parts), or `--init-from PATH` (a saved PISA checkpoint). `--resume-from
OUT/checkpoints/checkpoint-N` (or `latest`) continues a run exactly: model, optimizer, scheduler, RNG states and
the position in the data stream. A resume takes the settings recorded in the checkpoint (`RUN_SETTINGS`: leave
them out); one given with another value is refused, naming it, as is a checkpoint already past `--max-steps`. The
checkpoint policy (`CHECKPOINT_POLICY`: --save-steps, --save-total-limit) is recorded too and adopted when left out,
but may change on a resume (printed).

One run per output folder: a run holds an advisory lock on OUT (`flock`, released by the kernel when the process
ends, however it ends), and a fresh run refuses an OUT that holds another run's checkpoints, metrics or model
unless `--overwrite-output-dir` (which removes the old checkpoints and metrics first). A run resuming from one
of OUT's own checkpoints continues there, dropping the metrics logged after that checkpoint. A folder without a
complete checkpoint holds no run to lose: a fresh run starts there, and `--resume-from latest` starts at step 0.

A checkpoint is written whole to `checkpoint-N.partial` and renamed into place (`_move_into_place`: one saved again
replaces the old atomically); the next start removes what an interrupted save left (`_tidy_checkpoints`). A full
disk during a save is one line naming the folder and the bytes needed, with nothing half-written left.

The data stream is defined in optimizer steps: step s uses samples [s*G, (s+1)*G) of an endless sequence of
seeded per-epoch permutations of the rows (G = batch size x accumulation x processes; process r takes the r-th
slice). A checkpoint therefore resumes at a position, whatever the epoch boundaries, and every row is seen once
per epoch. The final model (with its processor and custom code) is saved to OUT; `train()` returns OUT.
"""

import argparse
import contextlib
import dataclasses
import errno
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
# How often a run saves and how many checkpoints it keeps: recorded with the settings and adopted by a resume that
# leaves them out, but a resume may change them (it says so): they do not change what is trained.
CHECKPOINT_POLICY = ("save_steps", "save_total_limit")
PARTIAL = ".partial"  # a checkpoint being written
ASIDE = ".old"  # a checkpoint moved aside while its replacement is renamed into place
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


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
        help="LoRA rank on the language model; default: LISA's 8 with --from-components, 0 with --init-from tiny, "
        "a checkpoint's own adapters with --init-from CHECKPOINT (one without adapters needs R for new ones or 0); "
        "0 = full fine-tuning of the language model",
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
    parser.add_argument(
        "--num-processes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="train as N processes on this machine, one per GPU (on CPU processes with --cpu or where no GPU is "
        "visible), started by accelerate launch's own launcher run inside this command, which then exits as the "
        "processes did (2 for a refusal, printed once; 1 for a failed operation) and adds no report of its own; "
        "leave it out under `accelerate launch`",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="train on CPU even where a GPU is visible; with --num-processes N, N real CPU processes (unlike "
        "`accelerate launch --cpu --num_processes N`, which runs one)",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


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
    """What an earlier run left in `output_dir` that a fresh run would lose: complete checkpoints, its final model
    (and its metrics log beside them). A folder holding neither (a run killed before its first checkpoint, or one
    whose save failed) is free for a fresh run."""
    found = [os.path.join(CHECKPOINTS, "")] if _complete_checkpoints(output_dir) else []
    found += [
        name
        for name in ("model.safetensors", "model.safetensors.index.json")
        if os.path.exists(os.path.join(output_dir, name))
    ]
    if found and os.path.exists(os.path.join(output_dir, METRICS_FILE)):
        found.insert(1 if found[0].startswith(CHECKPOINTS) else 0, METRICS_FILE)
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
        resume_it = "resume it with --resume-from latest, " if _complete_checkpoints(args.output_dir) else ""
        raise ValueError(
            f"{args.output_dir} holds another run ({', '.join(previous)}): {resume_it}choose another --output-dir, "
            "or pass --overwrite-output-dir to start over there"
        )
    shutil.rmtree(os.path.join(args.output_dir, CHECKPOINTS), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(args.output_dir, METRICS_FILE))


def _adopt_run_settings(args, given: set, state: dict, checkpoint: str) -> None:
    """Continue with the settings `checkpoint` was trained with: adopt those left out, refuse changed ones (the
    checkpoint policy may change: see `_adopt_checkpoint_policy`)."""
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
    _adopt_checkpoint_policy(args, given, recorded, checkpoint)
    if args.max_steps is not None and step > args.max_steps:
        raise ValueError(
            f"{checkpoint} is at step {step}, past --max-steps {args.max_steps}: there is nothing left to train"
        )


def _adopt_checkpoint_policy(args, given: set, recorded: dict, checkpoint: str) -> None:
    """--save-steps and --save-total-limit: the run's own when left out; a new value is taken and said."""
    for name in CHECKPOINT_POLICY:
        if name not in recorded:  # a checkpoint from before the policy was recorded
            continue
        if name not in given:
            setattr(args, name, recorded[name])
        elif getattr(args, name) != recorded[name] and _is_main_rank():
            print(
                f"pisa_model.train: {_flag(name)} {getattr(args, name)} replaces the {recorded[name]} that "
                f"{checkpoint} was saved with",
                file=sys.stderr,
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
    if args.lora_rank is None and (args.from_components or args.tiny or args.init_from == "tiny"):
        args.lora_rank = 8 if args.from_components else 0  # a checkpoint's own is left to `_checkpoint_lora`
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
        _checkpoint_lora(model, args, init_from)
        model, processor, origin = model, model.get_processor(), f"checkpoint {init_from}"
    model.apply_dtype_policy(compute_dtype)
    return model, processor, origin


def _checkpoint_lora(model, args, checkpoint: str) -> None:
    """The LoRA setting of a run started from a saved checkpoint. One with adapters trains them (a --lora-rank that
    differs is refused). One without (a LoRA checkpoint saved merged, or a fully fine-tuned one) would have its
    whole language model trained: that is done only with --lora-rank 0; --lora-rank R puts new adapters on it, as
    LISA trains LoRA on merged weights; with neither, the run is refused."""
    own = model.config.lora_rank
    if own > 0:
        if args.lora_rank not in (None, own):
            raise ValueError(
                f"--lora-rank {args.lora_rank}: {checkpoint} holds LoRA adapters of rank {own}, which the run trains "
                "(leave --lora-rank out)"
            )
        args.lora_rank = own
        return
    if args.lora_rank is None:
        language_model = sum(p.numel() for p in model.llava.model.language_model.parameters())
        raise ValueError(
            f"--init-from {checkpoint}: its language model has no LoRA adapters (a checkpoint saved merged?), so "
            f"training would fine-tune all {language_model:,} of its parameters: pass --lora-rank R for new "
            "adapters (LISA: 8) or --lora-rank 0 for full fine-tuning"
        )
    if args.lora_rank > 0:
        model.config.update(_lora_options(args))
        model._inject_lora()
        model._set_trainable()


def _complete_checkpoints(output_dir) -> dict:
    """{step: folder} of the complete checkpoints under OUTPUT_DIR/checkpoints (a folder is complete once it holds
    its state file, written last). A checkpoint moved aside for its replacement (see `_move_into_place`) counts
    under its own name while no replacement stands there: `_tidy_checkpoints` moves it back."""
    root = os.path.join(output_dir, CHECKPOINTS)
    found = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        number = name[len("checkpoint-") :].removesuffix(ASIDE)
        if name.startswith("checkpoint-") and number.isdigit() and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.setdefault(int(number), os.path.join(root, f"checkpoint-{number}"))
    return found


def _latest_checkpoint(output_dir):
    """The newest complete checkpoint of OUTPUT_DIR, or None."""
    found = _complete_checkpoints(output_dir)
    return found[max(found)] if found else None


def _tidy_checkpoints(output_dir) -> None:
    """Finish what an interrupted save left in OUTPUT_DIR/checkpoints: a checkpoint moved aside for a replacement
    that never arrived goes back (one whose replacement stands goes), and unfinished saves (`.partial`) go."""
    root = os.path.join(output_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.endswith(ASIDE):
            replacement = path.removesuffix(ASIDE)
            if os.path.isfile(os.path.join(replacement, STATE_FILE)):
                shutil.rmtree(path)
            else:
                shutil.rmtree(replacement, ignore_errors=True)
                os.replace(path, replacement)
        elif name.endswith(PARTIAL):
            shutil.rmtree(path)


def _read_state(checkpoint):
    path = os.path.join(checkpoint, STATE_FILE)
    if not os.path.isfile(path) and os.path.isfile(os.path.join(checkpoint + ASIDE, STATE_FILE)):
        path = os.path.join(checkpoint + ASIDE, STATE_FILE)  # another process is moving it back (`_tidy_checkpoints`)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{checkpoint}: not a training checkpoint ({STATE_FILE} missing)")
    try:
        with open(path) as f:
            state = json.load(f)
        int(state["step"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: malformed training state ({error})") from None
    return state


def _move_into_place(new: str, folder: str) -> None:
    """Make the complete checkpoint `new` the one at `folder`, so that a kill at any moment leaves a complete
    checkpoint there or beside it: an existing one is moved aside, the new one renamed into place, and only then
    is the old one removed (`_tidy_checkpoints` finishes the job after a kill in between)."""
    aside = folder + ASIDE
    if os.path.isdir(folder):
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(folder, aside)
    os.replace(new, folder)
    shutil.rmtree(aside, ignore_errors=True)


def _prune_checkpoints(output_dir, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (0: all)."""
    if keep > 0:
        found = _complete_checkpoints(output_dir)
        for step in sorted(found)[:-keep]:
            shutil.rmtree(found[step], ignore_errors=True)


def _state_bytes(tensors) -> int:
    """Bytes of the tensors in a (nested) state, each storage once."""
    seen, total = set(), 0
    stack = [tensors]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, torch.Tensor) and item.untyped_storage().data_ptr() not in seen:
            seen.add(item.untyped_storage().data_ptr())
            total += item.untyped_storage().nbytes()
    return total


def _save_failure(run, folder: str, error: Exception):
    """The one-line failure of a checkpoint save that failed with `error`, or None when it is not about the disk.

    A full disk shows as ENOSPC / EDQUOT, or (torch.save reports it as a RuntimeError) as less space free than a
    checkpoint needs: the model's state plus the optimizer's."""
    from instructpart_dataset.toolbox.cli_errors import OperationFailed, describe_os_error

    model_state = run.accelerator.unwrap_model(run.model).state_dict()
    needed = _state_bytes(model_state) + _state_bytes(run.optimizer.state_dict()["state"])
    free = shutil.disk_usage(os.path.dirname(folder)).free
    if getattr(error, "errno", None) in DISK_FULL or free < needed:
        return OperationFailed(
            f"{os.path.dirname(folder)}: disk full while saving {os.path.basename(folder)}: a checkpoint needs about "
            f"{needed:,} bytes, {free:,} are free there (free some space or lower --save-total-limit, then resume "
            "with --resume-from latest)"
        )
    if isinstance(error, OSError):
        return OperationFailed(f"{folder}: cannot write: {describe_os_error(error)}")
    return None


def _save_checkpoint(run, args, step):
    """Save a resumable checkpoint at `step`: written to `checkpoint-N.partial`, then moved into place whole."""
    accelerator = run.accelerator
    folder = os.path.join(args.output_dir, CHECKPOINTS, f"checkpoint-{step}")
    partial = folder + PARTIAL
    if accelerator.is_main_process and os.path.isdir(partial):
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(partial)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {
                "step": step,
                "seed": args.seed,
                "rows_per_step": run.stream.per_step,
                "num_rows": run.stream.num_rows,
                "settings": {name: getattr(args, name) for name in RUN_SETTINGS + CHECKPOINT_POLICY},
            }
            with open(os.path.join(partial, STATE_FILE), "w") as f:
                json.dump(state, f)
    except (OSError, RuntimeError) as error:
        shutil.rmtree(partial, ignore_errors=True)  # nothing half-written stays
        failure = _save_failure(run, folder, error)
        if failure is None:
            raise
        raise failure from None
    if accelerator.is_main_process:
        _move_into_place(partial, folder)
        _prune_checkpoints(args.output_dir, args.save_total_limit)
    accelerator.wait_for_everyone()


def _check_args(args):
    if args.max_steps is None:
        raise ValueError("--max-steps is required (a resume takes the run's own)")
    for name in ("batch_size", "grad_accum", "max_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("save_steps", "warmup_steps", "log_steps", "num_workers", "lora_rank", "save_total_limit"):
        if (getattr(args, name) or 0) < 0:  # lora_rank is None until a checkpoint's own is read
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
    main_rank = _is_main_rank()
    if main_rank and os.path.isdir(os.path.join(args.output_dir, CHECKPOINTS)):
        with _output_dir_lock(args.output_dir):  # never while another run saves there
            _tidy_checkpoints(args.output_dir)
    resume, resume_state = _resume_point(args, given)
    _apply_lisa_defaults(args)  # after the resume's adoption: a recorded setting wins over the default
    _check_args(args)
    with _output_dir_lock(args.output_dir, enabled=main_rank):
        if main_rank:
            _prepare_output_dir(args, resume)
        return _train(args, resume, resume_state)


def _resume_point(args, given: set):
    """(checkpoint, its state) to resume from, its settings adopted into `args`; (None, None) for a fresh run,
    which `--resume-from latest` is in a folder without a complete checkpoint (it starts at step 0, and says so)."""
    if not args.resume_from:
        return None, None
    resume = args.resume_from
    if resume == "latest":
        resume = _latest_checkpoint(args.output_dir)
        if resume is None:
            if _is_main_rank():
                print(
                    f"pisa_model.train: no complete checkpoint under {os.path.join(args.output_dir, CHECKPOINTS)}: "
                    "--resume-from latest starts at step 0",
                    file=sys.stderr,
                )
            return None, None
    elif not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume-from {resume}: no such checkpoint folder")
    state = _read_state(resume)
    _adopt_run_settings(args, given, state, resume)
    return resume, state


@dataclasses.dataclass
class _Run:
    """What the training loop works with, once prepared by Accelerate."""

    accelerator: object
    model: torch.nn.Module  # as prepared (DDP-wrapped under several processes)
    unwrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    trainable: list
    stream: StepStreamSampler
    batches: object  # the data loader's iterator
    start_step: int
    metrics_path: str


def _train(args, resume, resume_state) -> str:
    """The steps of a run: data, model, optimizer and stream prepared; steps trained; the final model saved."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(
        cpu=getattr(args, "cpu", False),
        mixed_precision=args.mixed_precision,
        log_with=[t.strip() for t in args.report_to.split(",")] if args.report_to else None,
        project_dir=args.output_dir,
    )
    set_seed(args.seed)
    rows, configs = _load_training_rows(args, accelerator)
    _check_rows(args, len(rows), accelerator.num_processes, resume, resume_state)
    model, processor, origin = _build_model(args)
    run = _prepare_run(args, accelerator, model, processor, rows, resume, resume_state)
    if accelerator.is_main_process:
        print(
            f"pisa_model.train: {origin}; {len(rows)} rows ({', '.join(configs)} / {args.split}); "
            f"{sum(p.numel() for p in run.trainable):,} trainable parameters; {accelerator.num_processes} "
            f"process(es); {run.stream.per_step} rows per step; steps {run.start_step} -> {args.max_steps}",
            file=sys.stderr,
        )
    _train_steps(args, run)
    _save_final_model(args, run, processor, configs, len(rows))
    return args.output_dir


def _load_training_rows(args, accelerator):
    """(rows, configs). The main process loads first (it fills the dataset cache); a refusal (no such split, ...)
    is raised in every process only after all have passed the barrier, so none is left waiting at it."""
    from .data import load_rows, parse_configs

    configs = parse_configs(args.config)
    rows = refusal = None
    with accelerator.main_process_first():
        try:
            rows = load_rows(args.data_dir, configs=configs, split=args.split)
        except (ValueError, OSError) as error:
            refusal = error
    if refusal is not None:
        raise refusal
    return rows, configs


def _prepare_run(args, accelerator, model, processor, rows, resume, resume_state) -> _Run:
    """Optimizer, schedule and data stream, prepared by Accelerate, the resumed state restored."""
    from transformers import get_scheduler

    from .data import PisaCollator

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
    return _Run(
        accelerator=accelerator,
        model=model,
        unwrapped=accelerator.unwrap_model(model),
        optimizer=optimizer,
        scheduler=scheduler,
        trainable=trainable,
        stream=stream,
        batches=batches,
        start_step=start_step,
        metrics_path=os.path.join(args.output_dir, METRICS_FILE),
    )


def _start_metrics_log(args, run: _Run) -> None:
    """A fresh run starts a new log; a resumed one drops the lines logged after its checkpoint."""
    if not run.accelerator.is_main_process:
        return
    os.makedirs(args.output_dir, exist_ok=True)
    if run.start_step == 0:
        with contextlib.suppress(FileNotFoundError):
            os.remove(run.metrics_path)
    else:
        _truncate_metrics(run.metrics_path, run.start_step)


def _train_steps(args, run: _Run) -> None:
    """Steps start_step + 1 .. max_steps: each one optimizer step, logged and checkpointed as asked."""
    from tqdm.auto import tqdm

    if args.report_to:
        run.accelerator.init_trackers("pisa_model.train", config={k: v for k, v in vars(args).items() if v is not None})
    _start_metrics_log(args, run)
    bar = tqdm(
        total=args.max_steps,
        initial=run.start_step,
        desc="train",
        unit="step",
        disable=args.no_progress or not run.accelerator.is_local_main_process,
    )
    running = {}
    started = time.perf_counter()
    for step in range(run.start_step + 1, args.max_steps + 1):
        _optimizer_step(args, run, running)
        bar.update(1)
        if args.log_steps and (step % args.log_steps == 0 or step == args.max_steps):
            logs = _log_step(args, run, step, running)
            running.clear()
            bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
        if args.save_steps and step % args.save_steps == 0:
            _save_checkpoint(run, args, step)
    bar.close()
    if run.accelerator.is_main_process:
        speed = _speed_and_memory(args.max_steps - run.start_step, run.stream.per_step, started, run.accelerator.device)
        print(f"pisa_model.train: trained {speed}", file=sys.stderr)


def _optimizer_step(args, run: _Run, running: dict) -> None:
    """One optimizer step over `grad_accum` micro-batches (gradients synchronised on the last one only); the
    micro-batches' losses are added to `running`."""
    for micro in range(args.grad_accum):
        batch = next(run.batches)
        last = micro == args.grad_accum - 1
        # prepare() already wrapped forward in the mixed-precision autocast.
        with run.accelerator.no_sync(run.model) if not last else contextlib.nullcontext():
            outputs = run.model(**run.unwrapped.prepare_inputs(batch))
            loss = outputs.loss / args.grad_accum
        run.accelerator.backward(loss)
        for key in ("loss", "lm_loss", "mask_bce_loss", "mask_dice_loss"):
            value = getattr(outputs, key)
            if value is not None:
                running[key] = running.get(key, 0.0) + float(value.detach()) / args.grad_accum
    if args.max_grad_norm > 0:
        run.accelerator.clip_grad_norm_(run.trainable, args.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def _log_step(args, run: _Run, step: int, running: dict) -> dict:
    """The losses averaged over the steps since the last log and over the processes, with the learning rate: sent
    to the trackers and appended to the metrics log."""
    span = args.log_steps if step % args.log_steps == 0 else step % args.log_steps
    averaged = torch.tensor([running.get(k, 0.0) for k in sorted(running)], device=run.accelerator.device) / span
    averaged = run.accelerator.reduce(averaged, reduction="mean")
    logs = dict(zip(sorted(running), averaged.tolist()))
    logs["lr"] = run.scheduler.get_last_lr()[0]
    run.accelerator.log(logs, step=step)
    if run.accelerator.is_main_process:
        with open(run.metrics_path, "a") as f:
            f.write(json.dumps({"step": step, **logs}) + "\n")
    return logs


def _save_final_model(args, run: _Run, processor, configs, num_rows: int) -> None:
    """The trained model, with its processor and custom code, saved to OUTPUT_DIR, and what it was trained on."""
    run.accelerator.wait_for_everyone()
    final = run.accelerator.unwrap_model(run.model)
    final.processor = processor
    final.save_pretrained(
        args.output_dir,
        is_main_process=run.accelerator.is_main_process,
        state_dict=run.accelerator.get_state_dict(run.model),
    )
    if run.accelerator.is_main_process:
        write_training_data(args.output_dir, args.data_dir, args.split, configs, num_rows)
    run.accelerator.end_training()


TRAINING_DATA_FILE = "training_data.json"


def write_training_data(folder: str, data_dir: str, split: str, configs, num_rows: int, **more) -> None:
    """What the model was trained on, kept beside its weights for its model card (`model_card.py`): the data's name
    (a local folder by its base name only: the file is published with the model), split, configs and rows; `more`
    adds e.g. `synthetic` (the demo's generated release)."""
    expanded = os.path.expanduser(data_dir)
    local = os.path.exists(expanded) or os.path.isabs(expanded) or data_dir.startswith(".") or data_dir.count("/") != 1
    name = os.path.basename(os.path.normpath(expanded)) if local else data_dir  # else a Hub id: ORG/NAME
    record = {"data": name, "split": split, "configs": list(configs), "rows": int(num_rows), **more}
    with open(os.path.join(folder, TRAINING_DATA_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)


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
    """The command: exit 0, 1 (a failed operation) or 2 (bad input), with one line on stderr. Launched as several
    processes, each refuses the same input alike, and only the main one says so: one line, whatever the launch."""
    from instructpart_dataset.toolbox.cli_errors import BAD_INPUT, check_writable, run_command

    args = parse_args(argv)
    launched_as = os.environ.get("WORLD_SIZE")  # set by a launcher in each process it starts
    if args.num_processes is not None and args.num_processes > 1 and launched_as is None:
        from pisa_model.launch import launch_training

        status = {}

        def launch():
            status["processes"] = launch_training(
                args.num_processes,
                sys.argv[1:] if argv is None else list(argv),
                cpu=args.cpu,
                mixed_precision=args.mixed_precision,
                prog=build_parser().prog,
            )

        return run_command(build_parser().prog, launch) or status["processes"]

    def checked_train():
        if launched_as is not None and args.num_processes not in (None, int(launched_as)):
            raise ValueError(
                f"--num-processes {args.num_processes}: this process is one of {launched_as} started by a launcher "
                "(leave --num-processes out under accelerate launch)"
            )
        check_writable(args.output_dir, folder=True)  # before the training, not after it
        train(args)

    def on_another_process():
        try:
            checked_train()
        except (ValueError, OSError):  # bad input, refused alike by every process: the main one prints the line
            raise SystemExit(BAD_INPUT) from None

    return run_command(build_parser().prog, checked_train if _is_main_rank() else on_another_process)


if __name__ == "__main__":
    sys.exit(main())
