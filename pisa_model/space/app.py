"""The PISA demo Space: a photo and an instruction in, the photo with the part that serves the task overlaid and
the part's mask (a downloadable PNG) out.

Custom-code models get no serverless widget on the Hub, so this Gradio app is the model's "try it" page. It needs
gradio, transformers, torch, numpy and pillow only (not the instructpart packages): the model's own code comes
with the checkpoint (`trust_remote_code=True`).

    python app.py [--model ORG/NAME_OR_FOLDER] [--examples DIR] [--port N]

The model is `--model`, else `$PISA_MODEL`, else the first `models:` entry of the README.md beside this file (the
Space's card, which is also what links the Space to the model on the Hub). Examples are `DIR/examples.json`
(`[{"image": "kettle.png", "instruction": "..."}]`, default `examples/` beside this file). The model is loaded
once, at startup; each request is one forward pass (or a generated answer of at most MAX_NEW_TOKENS tokens) on a
photo of at most MAX_PHOTO_PIXELS pixels, checked from its header before it is decoded. Refusals (a reserved
token in the instruction, an aspect ratio the model does not take, a file that is not an image) reach the user
as their one-line reason.
"""

import argparse
import html
import inspect
import json
import os
import time

try:
    import gradio as gr
except ImportError as missing:  # locally; on the Space, requirements.txt installs them
    raise ImportError(f"this Space app needs gradio ({missing}): pip install instructpart[space]") from None
import numpy as np
import torch
from huggingface_hub import RepoCard
from PIL import Image, ImageOps
from transformers import pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
TEACHER_FORCED, GENERATED = "teacher-forced", "generated"
OVERLAY_RGB = np.array([255, 40, 40])
OVERLAY_ALPHA = 0.55
TITLE = "PISA: task-oriented part segmentation"
# --- the bounds of one request ---
MAX_UPLOAD = "32mb"
MAX_PHOTO_PIXELS = 40_000_000  # decoded as RGB: 120 MB
MAX_NEW_TOKENS = 32  # a generated answer
QUEUE_SIZE = 16  # waiting requests (one runs at a time)


class Refused(gr.Error):
    """An expected refusal: its one-line reason shown to the user as text (gradio renders messages as HTML,
    which would drop `<image>`)."""

    def __init__(self, message: str):
        super().__init__(html.escape(message, quote=False), print_exception=False)


def model_from_card(readme: str) -> str:
    """The first model listed in a Space card's `models:` metadata."""
    models = RepoCard.load(readme).data.to_dict().get("models") or []
    if not models:
        raise ValueError(f"{readme}: the card lists no `models:`; pass --model or set PISA_MODEL")
    return models[0]


def load_segmenter(model: str):
    """The checkpoint's own pipeline (its code comes with it), on the GPU when there is one."""
    device = 0 if torch.cuda.is_available() else -1
    return pipeline(model=model, trust_remote_code=True, device=device)


def _pipeline_takes(segmenter, name: str) -> bool:
    return name in inspect.signature(segmenter._sanitize_parameters).parameters


def supports_generation(segmenter) -> bool:
    """Whether the checkpoint's pipeline takes `generate=True` (answer generated before segmenting); checkpoints
    whose code predates it only teacher-force the answer."""
    return _pipeline_takes(segmenter, "generate")


def open_photo(image) -> Image.Image:
    """The uploaded photo (a path, or a PIL image), upright, decoded only once its header shows at most
    MAX_PHOTO_PIXELS pixels."""
    if isinstance(image, (str, os.PathLike)):
        name = os.path.basename(image)
        try:
            image = Image.open(image)
        except Exception as error:  # PIL reports unreadable files through several exception types
            raise Refused(f"{name}: not a readable image ({type(error).__name__})") from None
        width, height = image.size
        if width * height > MAX_PHOTO_PIXELS:
            raise Refused(f"{name}: {width}x{height} pixels; this Space takes photos of up to {MAX_PHOTO_PIXELS:,}")
        try:
            image.load()
        except Exception as error:
            raise Refused(f"{name}: an unreadable image ({type(error).__name__}: {error})") from None
    return ImageOps.exif_transpose(image)


def overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the mask's pixels tinted red."""
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[mask] = ((1 - OVERLAY_ALPHA) * pixels[mask] + OVERLAY_ALPHA * OVERLAY_RGB).astype(np.uint8)
    return Image.fromarray(pixels)


def segment(segmenter, image, instruction, answer_mode=TEACHER_FORCED):
    """(overlay, mask as a mode-L 0/255 image, one line about the answer) for one request: a photo (its uploaded
    file, or a PIL image) and an instruction. The pipeline's refusals (ValueErrors) reach the user as Refused."""
    if image is None:
        raise Refused("Upload a photo (or pick an example below).")
    instruction = (instruction or "").strip()
    if not instruction:
        raise Refused("Type an instruction, e.g. 'If I want to open the cabinet, which part should I use?'")
    image = open_photo(image)
    # The radio offers GENERATED only where the pipeline takes it (gradio refuses other values).
    options = {}
    if answer_mode == GENERATED:
        options["generate"] = True
        if _pipeline_takes(segmenter, "max_new_tokens"):
            options["max_new_tokens"] = MAX_NEW_TOKENS
    start = time.perf_counter()
    try:
        (result,) = segmenter(image, instruction=instruction, **options)
    except ValueError as error:  # the processor's one-line refusals: [SEG]/<image> in the text, aspect ratio, ...
        raise Refused((str(error).strip().splitlines() or [type(error).__name__])[0]) from None
    seconds = time.perf_counter() - start
    mask_image = result["mask"].convert("L")
    mask = np.asarray(mask_image) > 0
    summary = (
        f"{int(mask.sum())} pixels ({100 * mask.mean():.1f}% of the image), mean probability {result['score']:.2f}; "
        f"{answer_mode} answer, {seconds:.2f} s"
    )
    if result.get("answer"):
        summary += f"; the model answered: {result['answer']!r}"
    return overlay(image, mask), mask_image, summary


def read_examples(folder: str | None) -> list:
    """`[[image path, instruction], ...]` from `folder/examples.json`; none when there is no such file."""
    if not folder or not os.path.isfile(os.path.join(folder, "examples.json")):
        return []
    with open(os.path.join(folder, "examples.json"), encoding="utf-8") as f:
        return [[os.path.join(folder, item["image"]), item["instruction"]] for item in json.load(f)]


def build_demo(segmenter, model_name: str, examples: list) -> gr.Blocks:
    generation = supports_generation(segmenter)
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"# {TITLE}\n"
            f"Model: `{model_name}`. Ask which part of an object serves a task (*If I want to pour water, which part "
            "of the kettle should I hold?*) or name the part (*handle of the kettle*); the predicted part is shown "
            "in red, and its mask can be downloaded as a PNG of the photo's size."
        )
        with gr.Row():
            with gr.Column():
                # The file itself (decoded here, after its size is checked), not gradio's RGB copy.
                image = gr.Image(type="filepath", image_mode=None, label="photo")
                instruction = gr.Textbox(label="instruction", lines=2)
                answer_mode = gr.Radio(
                    [TEACHER_FORCED, GENERATED] if generation else [TEACHER_FORCED],
                    value=TEACHER_FORCED,
                    label="answer mode",
                    info="teacher-forced: the trained answer 'Sure, it is [SEG].' is given and one forward pass "
                    "segments; generated: the model writes its answer first"
                    + ("" if generation else " (not supported by this checkpoint's code)"),
                )
                button = gr.Button("Segment", variant="primary")
            with gr.Column():
                shown = gr.Image(type="pil", label="the part", format="png", interactive=False)
                mask = gr.Image(
                    type="pil", label="mask (PNG, download with the arrow)", format="png", interactive=False
                )
                summary = gr.Textbox(label="answer", interactive=False)
        if examples:
            gr.Examples(examples, inputs=[image, instruction], label="generated examples (click one)")
        button.click(
            lambda *args: segment(segmenter, *args),
            inputs=[image, instruction, answer_mode],
            outputs=[shown, mask, summary],
            api_name="segment",
        )
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Hub id or folder of a PISA checkpoint")
    parser.add_argument("--examples", default=os.path.join(HERE, "examples"), help="folder with examples.json")
    parser.add_argument("--port", type=int, help="default: $GRADIO_SERVER_PORT or 7860")
    args = parser.parse_args(argv)
    model = args.model or os.environ.get("PISA_MODEL") or model_from_card(os.path.join(HERE, "README.md"))
    start = time.perf_counter()
    segmenter = load_segmenter(model)
    print(f"loaded {model} in {time.perf_counter() - start:.1f} s", flush=True)
    build_demo(segmenter, model, read_examples(args.examples)).launch(server_port=args.port, max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()
