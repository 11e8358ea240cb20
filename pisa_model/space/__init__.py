"""The PISA demo Space: `app.py`, staged by `stage_space` with generated examples and a card that names the model
(upload.py launches the stage and pushes it), and its local launcher:

python -m pisa_model.space --model out/demo/model [--port 7860]
"""

import json
import os

import numpy as np

APP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
# (object, size) of the generated example photos: the release's photos are not ours to redistribute.
EXAMPLE_OBJECTS = (("kettle", (320, 240)), ("sofa", (360, 240)), ("trash can", (240, 300)))


def write_examples(folder: str, seed: int = 0) -> list:
    """Render generated example photos into `folder` with one TRPS and one ORPS instruction each and write the
    `examples.json` that app.py reads; returns its entries."""
    from instructpart_dataset.synthetic import CATALOG, instructions_for, render_object

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    entries = []
    for name, size in EXAMPLE_OBJECTS:
        image, _ = render_object(name, size, rng)
        file_name = name.replace(" ", "_") + ".png"
        image.save(os.path.join(folder, file_name))
        human, _, _, _, part_name, _ = instructions_for(name, CATALOG[name][0], rng)
        entries += [{"image": file_name, "instruction": human}, {"image": file_name, "instruction": part_name}]
    with open(os.path.join(folder, "examples.json"), "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=1)
    return entries


# What the app imports besides gradio (which comes with the card's `sdk_version`).
SPACE_NEEDS = ("transformers", "torch", "safetensors", "huggingface_hub", "numpy", "pillow")


def stage_space(stage: str, model_repo_id: str, license: str | None = None) -> None:
    """The demo Space of `model_repo_id` in the empty folder `stage`: app.py, generated example photos,
    requirements and a card whose `models:` links the Space to the model (and tells the app which model to load)
    and which states the bounds of one request."""
    from huggingface_hub import SpaceCard, SpaceCardData

    from instructpart_dataset.toolbox.space_files import gradio_version, write_space_files

    from .app import MAX_NEW_TOKENS, MAX_PHOTO_PIXELS, MAX_UPLOAD, QUEUE_SIZE

    write_examples(os.path.join(stage, "examples"))
    data = SpaceCardData(
        title="PISA part segmentation",
        emoji="🔧",
        colorFrom="red",
        colorTo="gray",
        pinned=False,
        license=license,
        models=[model_repo_id],
        tags=["instructpart", "part-segmentation"],
    )
    card = SpaceCard(
        f"---\n{data.to_yaml()}\n---\n\n"
        f"Demo of [{model_repo_id}](https://huggingface.co/{model_repo_id}): a photo and an instruction in, the photo "
        "with the part that serves the task overlaid and the part's mask (PNG) out. The example photos are "
        "generated; the InstructPart release's photos are not redistributed here.\n\n"
        f"One request is bounded: an upload of at most {MAX_UPLOAD}, a photo of at most {MAX_PHOTO_PIXELS:,} "
        "pixels (checked from its header before it is decoded; the model sees it resized to its input size), one "
        f"forward pass, or a generated answer of at most {MAX_NEW_TOKENS} new tokens; one request runs at a time "
        f"and at most {QUEUE_SIZE} wait.\n\n"
        f"Run it locally: `pip install gradio=={gradio_version()} -r requirements.txt && python app.py --model "
        f"{model_repo_id}` (or a checkpoint folder).\n"
    )
    write_space_files(stage, APP_FILE, SPACE_NEEDS, card)
