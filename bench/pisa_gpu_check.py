"""PISA at the paper's size on one GPU: a random-init model (LLaVA-1.5-7B text config, DINOv2-L, SAM-H decoder)
in bf16, a LoRA training step (forward + backward + AdamW) and `predict`, printing samples/s and peak memory.

Each speed is also printed as a ratio to a floor measured in the same run on the same batch: the LLaVA part
alone (its forward, or its forward + backward with the LM loss), so the ratio is the cost of PISA's mask branch
on top of the language model it extends. Medians over `--repeats` timed runs after `--warmup` untimed ones.

    bash bench/gpu_check.sh                  # on the GPU machine
    python bench/pisa_gpu_check.py --tiny    # sanity run of the same code on CPU with the tiny config
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (checks the script, not the speed)")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--predict-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    return parser.parse_args(argv)


def build(args, device, dtype):
    """(model, processor) at full size (random weights, built directly on the device) or tiny."""
    if args.tiny:
        from pisa_model.testing import tiny_pisa

        model, processor = tiny_pisa(seed=0, lora_rank=args.lora_rank)
        return model.to(device=device, dtype=dtype), processor

    from transformers import CLIPImageProcessorPil, SamImageProcessorPil
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from pisa_model import PisaConfig, PisaForPartSegmentation, PisaProcessor
    from pisa_model.testing import tiny_tokenizer

    # The tiny word-level tokenizer stands in for LLaMA's (no download here); the sequence lengths below are
    # padded to LISA's typical prompt length so that the language model sees realistic shapes.
    tokenizer = tiny_tokenizer()
    config = PisaConfig(lora_rank=args.lora_rank, seg_token_id=tokenizer.convert_tokens_to_ids("[SEG]"))
    config.llava_config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    size = config.mask_input_size
    processor = PisaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        mask_image_processor=SamImageProcessorPil(
            size={"longest_edge": size},
            pad_size={"height": size, "width": size},
            mask_size={"longest_edge": size},
            mask_pad_size={"height": size, "width": size},
            image_mean=list(IMAGENET_DEFAULT_MEAN),
            image_std=list(IMAGENET_DEFAULT_STD),
        ),
        tokenizer=tokenizer,
        patch_size=14,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = PisaForPartSegmentation(config)
    finally:
        torch.set_default_dtype(previous)
    return model, processor


def batch_of(processor, count, rng, with_masks):
    from instructpart_dataset.synthetic import CATALOG, instructions_for, render_object

    images, texts, masks = [], [], []
    for i in range(count):
        name = list(CATALOG)[i % len(CATALOG)]
        image, parts = render_object(name, (640, 480), rng)
        spec = CATALOG[name][i % 2]
        # LISA's task instructions are a sentence or two: repeat ours to about that length.
        (
            images.append(image),
            texts.append(" ".join([instructions_for(name, spec, rng)[0]] * 4)),
            masks.append(parts[spec.part]),
        )
    return processor(images=images, text=texts, masks=masks if with_masks else None), images, texts


def timed(fn, repeats, warmup, device):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if not args.tiny and device.type != "cuda":
        print("no CUDA device: run with --tiny for a CPU sanity check", file=sys.stderr)
        return 2
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.tiny:
        torch.set_num_threads(1)
    start = time.perf_counter()
    model, processor = build(args, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(
        f"device {device} dtype {dtype}; {params / 1e9:.3f} B parameters, "
        f"{sum(p.numel() for p in trainable) / 1e6:.2f} M trainable (LoRA r={args.lora_rank}); "
        f"built in {time.perf_counter() - start:.1f} s"
    )
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    rng = np.random.default_rng(0)

    # --- training step -----------------------------------------------------------------------------------
    batch, _, _ = batch_of(processor, args.train_batch, rng, with_masks=True)
    inputs = model.prepare_inputs(batch)
    print(
        f"train batch {args.train_batch}: sequence length {inputs['input_ids'].shape[1]}, "
        f"mask input {tuple(inputs['mask_pixel_values'].shape[-2:])}"
    )
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    model.train()

    def pisa_step():
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def llava_step():  # the floor: the same LLaVA, LM loss only
        out = model.llava(
            input_ids=inputs["input_ids"],
            pixel_values=inputs["pixel_values"],
            attention_mask=inputs["attention_mask"],
            labels=inputs["labels"],
            use_cache=False,
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    floor = timed(llava_step, args.repeats, args.warmup, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = timed(pisa_step, args.repeats, args.warmup, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    print(
        f"train step: {args.train_batch / step:.2f} samples/s ({step * 1e3:.0f} ms); "
        f"{step / floor:.2f}x the LLaVA-only step ({floor * 1e3:.0f} ms); peak memory {peak:.1f} GiB"
    )

    # --- predict -----------------------------------------------------------------------------------------
    model.eval()
    optimizer = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _, images, texts = batch_of(processor, args.predict_batch, rng, with_masks=False)
    pred_inputs = model.prepare_inputs(processor(images=images, text=texts))

    def llava_forward():
        with torch.inference_mode():
            model.llava.model(
                input_ids=pred_inputs["input_ids"],
                pixel_values=pred_inputs["pixel_values"],
                attention_mask=pred_inputs["attention_mask"],
                use_cache=False,
            )

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    floor = timed(llava_forward, args.repeats, args.warmup, device)
    masks = []
    predict = timed(
        lambda: masks.append(model.predict(images, texts, batch_size=args.predict_batch, processor=processor)),
        args.repeats,
        args.warmup,
        device,
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    shapes_ok = all(m.shape == (480, 640) and m.dtype == bool for m in masks[-1])
    print(
        f"predict (end to end, processor included): {args.predict_batch / predict:.2f} samples/s "
        f"({predict * 1e3:.0f} ms per batch of {args.predict_batch}); {predict / floor:.2f}x the LLaVA-only "
        f"forward ({floor * 1e3:.0f} ms); peak memory {peak:.1f} GiB; masks at original size: {shapes_ok}"
    )
    return 0 if shapes_ok else 1


if __name__ == "__main__":
    sys.exit(main())
