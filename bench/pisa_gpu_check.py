"""PISA's real path end to end on one GPU, the way a user runs it, in a few minutes.

1. Full-size random components with the real configs (`pisa_model/configs/`: LLaVA-1.5-7B, DINOv2-L, SAM-H) saved
   in the real checkpoints' stored dtypes (LLaVA float16, DINOv2 and SAM float32). The LLaVA folder carries the
   tiny word-level tokenizer of `pisa_model.tiny` (no download here); the model keeps LLaVA's 32,064 rows.
2. A generated release, then `accelerate launch -m pisa_model.train --from-components ...` with the default flags
   (LoRA r=8 on q_proj/v_proj, batch 2, 896 px mask input, `--mixed-precision bf16`) for a few optimizer steps.
3. `pisa_model.evaluate`'s `evaluate_model` on the trained checkpoint in both answer modes (teacher-forced and
   generated).

It prints the losses (and whether they are finite), train and predict samples/s, the peak GPU memory of training
and of prediction, `pisa_model.budget`'s estimate for the same flags next to the measured training peak, the wall
time of each phase and the disk used; it exits 1 when a loss is not finite or a mask has the wrong size, and 2 before
starting when the work folder's file system has less free space than the check writes (`disk_needed`). It never
imports `datasets`: on a node without it, the release folder is read from its files (`pisa_model.data.load_rows`).

    bash bench/gpu_check.sh                   # on a machine with a CUDA GPU (meant to finish within 8 minutes on one H100)
    bash bench/gpu_check.sh --tiny            # the same steps with tiny components on CPU (CI runs it)
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny components on CPU: checks the steps, not the speed")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps")
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--test-rows", type=int, default=16, help="rows evaluated in each answer mode")
    parser.add_argument("--work-dir", default=None, help="keep the components, release and checkpoint here")
    parser.add_argument("--no-lisa", action="store_true", help="skip the LISA pass")
    return parser.parse_args(argv)


def save_full_size_components(folder: str, device: torch.device):
    """Random LLaVA-1.5-7B / DINOv2-L / SAM-H built on `device` from the shipped configs, saved as the Hub stores
    them (LLaVA float16, the others float32), with processors; returns the three folders."""
    from transformers import (
        BitImageProcessorPil,
        CLIPImageProcessorPil,
        Dinov2Config,
        Dinov2Model,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SamConfig,
        SamModel,
    )
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from pisa_model.budget import _read_config
    from pisa_model.tiny import REAL_STORED_DTYPES, tiny_tokenizer

    tokenizer = tiny_tokenizer(with_seg=False)
    llava_config = LlavaConfig.from_dict(_read_config("llava-1.5-7b-hf"))
    llava_config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    llava_config.text_config.pad_token_id = tokenizer.pad_token_id
    llava_config.text_config.bos_token_id = tokenizer.bos_token_id
    llava_config.text_config.eos_token_id = tokenizer.eos_token_id
    paths = [os.path.join(folder, name) for name in ("llava", "dinov2", "sam")]
    builds = (
        (LlavaForConditionalGeneration, llava_config, REAL_STORED_DTYPES["llava"]),
        (Dinov2Model, Dinov2Config.from_dict(_read_config("dinov2-large")), REAL_STORED_DTYPES["dinov2"]),
        (SamModel, SamConfig.from_dict(_read_config("sam-vit-huge")), REAL_STORED_DTYPES["sam"]),
    )
    for path, (model_class, config, dtype) in zip(paths, builds):
        with torch.device(device):  # random init on the GPU takes seconds where the CPU would take minutes
            model = model_class(config).to(dtype)
        model.save_pretrained(path)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    clip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    LlavaProcessor(
        image_processor=clip,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(paths[0])
    BitImageProcessorPil(image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD)).save_pretrained(
        paths[1]
    )
    return paths


def save_lisa(folder: str, device: torch.device, tiny: bool) -> str:
    """A random LISA in the layout `python -m pisa_model.convert_lisa` writes, saved in bfloat16 throughout (what the
    converter keeps of LISA-7B-v1's bfloat16 release): full size from `budget.lisa_full_size_config` (LLaMA-7B,
    CLIP ViT-L/14-224, linear projector, SAM-H's encoder at 1024 px; 32,004 rows), or tiny. It carries LISA's prompt,
    answer and preprocessing with the tiny word-level tokenizer plus LISA's `<im_start>`/`<im_end>`."""
    from transformers import AddedToken, CLIPImageProcessorPil

    from pisa_model import PisaForPartSegmentation
    from pisa_model.budget import lisa_full_size_config
    from pisa_model.convert_lisa import lisa_processor
    from pisa_model.tiny import (
        TINY_LLAVA_IMAGE_SIZE,
        TINY_MASK_DECODER,
        TINY_PROMPT_ENCODER,
        tiny_pisa_config,
        tiny_tokenizer,
    )

    tokenizer = tiny_tokenizer(with_seg=True)
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=True) for t in ("<im_start>", "<im_end>")], True)
    ids = {"image_token_index": tokenizer.convert_tokens_to_ids("<image>")}
    if tiny:
        sam_vision = dict(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8, output_channels=32
        )
        sam_vision.update(global_attn_indexes=[1], num_pos_feats=16, mlp_dim=32)
        config = tiny_pisa_config(
            tokenizer,
            mask_encoder="sam",
            projector_type="linear",
            sam_vision_config=sam_vision,
            prompt_encoder_config=TINY_PROMPT_ENCODER,
            mask_decoder_config=TINY_MASK_DECODER,
        )
        clip_size = TINY_LLAVA_IMAGE_SIZE
    else:
        config = lisa_full_size_config()
        clip_size = config.llava_config.vision_config.image_size
    config.llava_config.image_token_index = ids["image_token_index"]
    config.seg_token_id = tokenizer.convert_tokens_to_ids("[SEG]")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config.llava_config.text_config, name, getattr(tokenizer, name))
    torch.manual_seed(0)  # the same random LISA on every run
    with torch.device(device):
        model = PisaForPartSegmentation(config).to(torch.bfloat16)
    model.processor = lisa_processor(
        CLIPImageProcessorPil(size={"shortest_edge": clip_size}, crop_size={"height": clip_size, "width": clip_size}),
        tokenizer,
        mask_size=config.mask_input_size,
        patch_size=config.llava_config.vision_config.patch_size,
        vision_feature_select_strategy="default",
    )
    model.save_pretrained(folder)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return folder


def predict_pass(adapter, dataset, folder, device, *, label: str, estimate: str, num_workers: int = 0) -> float:
    """Predict `dataset` with `adapter` into `folder` (evaluate_model refuses a mask of the wrong size) and print
    samples/s, peak GPU memory against the budget's `estimate`, gIoU and, for generated answers, how many held
    [SEG]; returns the wall seconds."""
    from pisa_model.budget import GIB
    from pisa_model.evaluate import evaluate_model

    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    scorer, extras = evaluate_model(
        adapter, dataset, batch_size=8, prediction_dir=folder, progress=False, num_workers=num_workers
    )
    peak = f"{torch.cuda.max_memory_allocated() / GIB:.2f} GiB" if device.type == "cuda" else "n/a (no GPU)"
    line = (
        f"{label} ({adapter.answer_mode}): {extras['rows_per_second']:.2f} samples/s over {len(scorer)} rows; "
        f"peak GPU memory {peak} ({estimate}); gIoU {100 * scorer.compute()['gIoU']:.2f}"
    )
    if adapter.answer_mode == "generated":
        with_seg = sum(record["has_seg"] for record in extras["records"])
        line += f"; answers with [SEG]: {with_seg}/{len(extras['records'])}"
        line += f"; first answer: {extras['records'][0]['answer']!r}"
    print(line)
    return time.perf_counter() - started


def lisa_pass(args, work, device, dataset, phases) -> None:
    """A random LISA written as `convert_lisa` writes LISA-7B-v1, loaded through the `lisa:` adapter in bfloat16,
    predicting the same rows in both answer modes (`predict_pass`, against `pisa_model.budget --model lisa`'s
    inference estimate)."""
    from pisa_model.adapters import load_adapter
    from pisa_model.budget import inference_estimate

    started = time.perf_counter()
    folder = save_lisa(os.path.join(work, "lisa"), device, args.tiny)
    phases["write LISA"] = time.perf_counter() - started
    print(f"LISA ({'tiny' if args.tiny else 'LISA-7B-v1 size'}, bfloat16) saved in {phases['write LISA']:.0f} s")
    for generate in (False, True):
        started = time.perf_counter()
        adapter = load_adapter(f"lisa:{folder}", device=device, dtype=torch.bfloat16, generate=generate)
        estimate = _size(inference_estimate(adapter.model.config, batch_size=8).total_bytes)
        folder_out = os.path.join(work, f"lisa-predictions-{adapter.answer_mode}")
        predict_pass(
            adapter,
            dataset,
            folder_out,
            device,
            label="LISA predict",
            estimate=f"budget --model lisa estimate {estimate}",
        )
        phases[f"LISA {adapter.answer_mode}"] = time.perf_counter() - started
        del adapter
        if device.type == "cuda":
            torch.cuda.empty_cache()


def train(args, components, release, output, mask_input_size):
    """`accelerate launch -m pisa_model.train` with the default flags; returns (metrics lines, closing line)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), ROOT])))
    if args.tiny:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "bf16",
        "--dynamo_backend",
        "no",
        "-m",
        "pisa_model.train",
        "--data-dir",
        release,
        "--output-dir",
        output,
        "--from-components",
        ",".join(components),
        "--mixed-precision",
        "bf16",
        "--max-steps",
        str(args.steps),
        "--grad-accum",
        str(args.grad_accum),
        "--warmup-steps",
        "1",
        "--log-steps",
        "1",
        "--no-progress",
    ]
    if mask_input_size is not None:
        command += ["--mask-input-size", str(mask_input_size)]
    # cwd: not this checkout, whose folder `-m` would put first on the path, before the bundle's instructpart.
    run = subprocess.run(command, env=env, cwd=os.path.dirname(output), capture_output=True, text=True, check=False)
    if run.returncode != 0:
        print(run.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"training failed (exit {run.returncode})")
    with open(os.path.join(output, "metrics.jsonl")) as handle:
        metrics = [json.loads(line) for line in handle]
    closing = [line for line in run.stderr.splitlines() if line.startswith("pisa_model.train: trained")]
    return metrics, (closing[-1] if closing else "")


def print_versions() -> None:
    """The interpreter and the versions this check runs with (with `--wheels`, the bundle's where it has them)."""
    from importlib import metadata

    import pisa_model

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    names = ("instructpart", "transformers", "huggingface_hub", "accelerate", "peft", "safetensors", "tokenizers")
    names += ("numpy", "pillow", "datasets")
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    print(
        f"python {sys.version.split()[0]}; torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}{gpu})"
    )
    print(
        "running with: "
        + ", ".join(f"{name} {version(name)}" for name in names)
        + f"; pisa_model from {os.path.dirname(pisa_model.__file__)}"
    )


# Besides the components and the trained checkpoint: the generated release, caches, predictions, logs.
DISK_MARGIN = {"full": 2 * 2**30, "tiny": 256 * 2**20}
WALL_BUDGET_S = 480  # the whole check on one H100, writing the components included


def _stored_bytes(model_class, config, dtype: torch.dtype) -> int:
    """Bytes of `model_class(config)`'s state dict saved in `dtype`, counted on the meta device."""
    with torch.device("meta"):
        model = model_class(config)
    size = torch.empty((), dtype=dtype).element_size()
    return sum(tensor.numel() * size for tensor in model.state_dict().values())


def disk_needed(tiny: bool, lisa: bool = True) -> dict:
    """{what: bytes} the check writes: the three full-size components in their stored dtypes, the trained
    checkpoint (frozen weights in bfloat16, trainable ones in float32: the dtype policy it is saved under), the LISA
    pass's converted LISA-7B (bfloat16) and a margin; with --tiny the margin alone (its tiny files are a few MB)."""
    if tiny:
        return {"other": DISK_MARGIN["tiny"]}
    from transformers import Dinov2Config, Dinov2Model, LlavaConfig, LlavaForConditionalGeneration, SamConfig, SamModel

    from pisa_model.budget import _read_config, count_parameters, full_size_config, lisa_full_size_config
    from pisa_model.tiny import REAL_STORED_DTYPES

    components = _stored_bytes(
        LlavaForConditionalGeneration,
        LlavaConfig.from_dict(_read_config("llava-1.5-7b-hf")),
        REAL_STORED_DTYPES["llava"],
    )
    components += _stored_bytes(
        Dinov2Model, Dinov2Config.from_dict(_read_config("dinov2-large")), REAL_STORED_DTYPES["dinov2"]
    )
    components += _stored_bytes(SamModel, SamConfig.from_dict(_read_config("sam-vit-huge")), REAL_STORED_DTYPES["sam"])
    checkpoint = count_parameters(full_size_config(lora_rank=8), torch.bfloat16)[2]
    need = {"components": components, "checkpoint": checkpoint}
    if lisa:
        need["lisa"] = 2 * count_parameters(lisa_full_size_config())[0]  # saved in bfloat16 throughout
    return need | {"other": DISK_MARGIN["full"]}


def refuse_without_disk(folder: str, needed: int):
    """The one-line refusal when the file system of `folder` (or its nearest existing parent) has less than
    `needed` bytes free; None when it has enough."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if free >= needed:
        return None
    return (
        f"bench/gpu_check.sh: error: {existing}: {_size(free)} free, the check writes {_size(needed)} "
        "(--work-dir elsewhere, or free some space)"
    )


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(parent, name)) for parent, _, names in os.walk(folder) for name in names)


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def main(argv=None):
    args = parse_args(argv)
    print_versions()
    if not args.tiny and not torch.cuda.is_available():
        print(
            "bench/gpu_check.sh needs a CUDA GPU and this machine has none; "
            "`bash bench/gpu_check.sh --tiny` runs the same steps with tiny components on CPU",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        torch.set_num_threads(1)
    from instructpart_dataset.synthetic import make_release
    from pisa_model import PisaConfig, PisaForPartSegmentation
    from pisa_model.adapters.pisa import PisaAdapter
    from pisa_model.budget import estimate, inference_estimate
    from pisa_model.data import load_rows
    from pisa_model.tiny import REAL_STORED_DTYPES, save_tiny_components

    needed = disk_needed(args.tiny, lisa=not args.no_lisa)
    refusal = refuse_without_disk(args.work_dir or tempfile.gettempdir(), sum(needed.values()))
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    print("disk needed: " + ", ".join(f"{what} {_size(count)}" for what, count in needed.items()))
    work = args.work_dir or tempfile.mkdtemp(prefix="pisa-gpu-check-")
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(work, "datasets-cache"))
    failures, phases = [], {}
    check_started = time.perf_counter()
    try:
        started = time.perf_counter()
        if args.tiny:
            components = save_tiny_components(os.path.join(work, "components"), dtypes=REAL_STORED_DTYPES)
            mask_input_size = 64  # the tiny DINOv2's own size; the real default is 896
        else:
            components = save_full_size_components(os.path.join(work, "components"), device)
            mask_input_size = None
        phases["write components"] = time.perf_counter() - started
        print(
            f"components ({'tiny' if args.tiny else 'full size'}, LLaVA float16, DINOv2 float32, SAM float32) "
            f"saved in {phases['write components']:.0f} s"
        )
        started = time.perf_counter()
        release = make_release(os.path.join(work, "release"), seed=0, num_train=24, num_test=args.test_rows)
        phases["generate release"] = time.perf_counter() - started

        output = os.path.join(work, "trained")
        shutil.rmtree(output, ignore_errors=True)
        started = time.perf_counter()
        metrics, closing = train(args, components, release, output, mask_input_size)
        phases["train command"] = time.perf_counter() - started
        losses = [line["loss"] for line in metrics]
        finite = all(math.isfinite(value) for value in losses)
        if not finite:
            failures.append("a training loss is not finite")
        print(f"train command: {phases['train command']:.0f} s wall (launch, loading and saving included)")
        print(f"train losses: {', '.join(f'{value:.4f}' for value in losses)}; finite: {'yes' if finite else 'no'}")
        print(f"train: {closing.removeprefix('pisa_model.train: trained ')}")

        config = PisaConfig.from_pretrained(output)
        budget = estimate(config, batch_size=2, mixed_precision="bf16")
        measured = re.search(r"peak GPU memory ([0-9.]+) GiB", closing)
        print(
            f"budget estimate for these flags: {_size(budget.total_bytes)} (weights {_size(budget.weight_bytes)}, "
            f"gradients {_size(budget.gradient_bytes)}, optimizer {_size(budget.optimizer_bytes)}, activations "
            f"{_size(budget.activation_bytes)}); measured training peak: "
            + (f"{float(measured.group(1)):.2f} GiB" if measured else "n/a (no GPU)")
        )

        started = time.perf_counter()
        # As `pisa_model.evaluate --dtype bfloat16` loads it (the checkpoint itself says float32: it mixes dtypes).
        model = PisaForPartSegmentation.from_pretrained(output, dtype=torch.bfloat16).to(device).eval()
        dataset = load_rows(release, configs="trps", split="test")  # read without datasets where it is missing
        dataset = dataset.select(range(min(args.test_rows, len(dataset))))
        phases["load trained model"] = time.perf_counter() - started
        estimate = f"budget estimate {_size(inference_estimate(config, 8).total_bytes)}"
        for generate in (False, True):
            adapter = PisaAdapter(model, name="trained", generate=generate)
            folder = os.path.join(work, f"predictions-{adapter.answer_mode}")
            phases[f"predict {adapter.answer_mode}"] = predict_pass(
                adapter, dataset, folder, device, label="predict", estimate=estimate, num_workers=2
            )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.no_lisa:
            lisa_pass(args, work, device, dataset, phases)
        total = time.perf_counter() - check_started
        print("wall time per phase: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items()))
        print(f"wall time: {total:.0f} s" + ("" if args.tiny else f" (budget {WALL_BUDGET_S} s on one H100)"))
        used = {name: _folder_bytes(os.path.join(work, name)) for name in ("components", "trained", "lisa")}
        used["other"] = _folder_bytes(work) - sum(used.values())
        print(
            f"disk used: {_size(sum(used.values()))} in {work} ("
            + ", ".join(f"{name} {_size(count)}" for name, count in used.items())
            + f"; estimated {_size(sum(needed.values()))})"
        )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    print("gpu check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
