"""A small InstructPart release generated from a seed, in the exact official layout.

Every test that needs data, the benchmarks and the built-in demo use this one
generator, so that they all exercise the same code path as the real release:

    <root>/test/{images,masks}/<stem>-<object>-<part>.{jpg,png}, data_test.json
    <root>/train/train{200,600,1200,1800}/... data_train<N>.json (nested subsets)
    <root>/all/...                                       data_all.json (train ∪ test)

Each image shows one object made of two parts side by side, in random order,
each part with its own shape and hue family. The task instructions name an
action whose answer is one of the parts, so a model can only get the right part
by reading the instruction (which side it is on is random). Masks are mode "L"
PNGs with values 0 and 1, as released.
"""

import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .schema import TRAIN_SUBSETS, sample_id


@dataclass(frozen=True)
class PartSpec:
    part: str
    affordance: str
    participle: str  # "Where is the handle that can be <participle>?"
    action: str
    task: str  # completes "which part would I use to <task>?"
    shape: str
    hue: tuple


CATALOG = {
    "kettle": (
        PartSpec("handle", "hold", "held", "pour", "pour water", "ring", (200, 40, 40)),
        PartSpec("lid", "lift", "lifted", "fill", "fill it up", "rect", (40, 80, 200)),
    ),
    "wine glass": (
        PartSpec("stem", "hold", "held", "lift", "lift it without warming the wine", "triangle", (40, 170, 60)),
        PartSpec("bowl", "contain", "filled", "drink", "drink from it", "ellipse", (200, 170, 30)),
    ),
    "trash can": (
        PartSpec("lid", "lift", "lifted", "throw away", "throw rubbish away", "rect", (130, 50, 170)),
        PartSpec("foot pedal", "step on", "stepped on", "open", "open it hands-free", "triangle", (30, 160, 170)),
    ),
    "sofa": (
        PartSpec("couch cushion", "sit on", "sat on", "sit", "sit down", "ellipse", (190, 100, 40)),
        PartSpec("armrest", "lean on", "leaned on", "rest", "rest my arm", "ring", (90, 90, 90)),
    ),
}

HUMAN_TEMPLATES = (
    "Which part of the {object} would I use to {task}?",
    "If I want to {task}, which part of the {object} should I use?",
)
GPT4_TEMPLATES = (
    "To {task}, which part of the {object} in the picture is suitable?",
    "Identify the part of the {object} in the image that lets you {task}.",
)


def instructions_for(object_name: str, spec: PartSpec, rng: np.random.Generator) -> list:
    """The six release instruction variants, in release order."""
    fill = {"object": object_name, "task": spec.task}
    part, participle = spec.part, spec.participle
    return [
        HUMAN_TEMPLATES[rng.integers(len(HUMAN_TEMPLATES))].format(**fill),
        GPT4_TEMPLATES[rng.integers(len(GPT4_TEMPLATES))].format(**fill),
        f"Where is the {part} of the {object_name} in this image?",
        f"Where is the {part} of the {object_name} that can be {participle} in this image?",
        f"{part} of the {object_name}",
        f"{part} of the {object_name} that can be {participle}",
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple, fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "rect":
        draw.rectangle(box, fill=fill)
    elif shape == "ellipse":
        draw.ellipse(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, fill=fill)
        inset_x, inset_y = max(1, (x1 - x0) // 4), max(1, (y1 - y0) // 4)
        if x1 - x0 > 2 * inset_x and y1 - y0 > 2 * inset_y:  # tiny rings stay solid
            draw.ellipse((x0 + inset_x, y0 + inset_y, x1 - inset_x, y1 - inset_y), fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_object(object_name: str, size: tuple, rng: np.random.Generator):
    """One RGB image of `object_name` and the bool mask of each of its parts, keyed by part name."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(60, 200, size=3)
    slope = rng.normal(0, 0.3, size=(2, 3))
    background = base + xx[..., None] * slope[0] * 60 / width + yy[..., None] * slope[1] * 60 / height
    background = background + rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(background, 0, 255).astype(np.uint8)

    specs = list(CATALOG[object_name])
    order = rng.permutation(len(specs))
    slot_width = width // len(specs)
    masks = {}
    for slot, index in enumerate(order):
        spec = specs[index]
        w = int(slot_width * rng.uniform(0.55, 0.85))
        h = int(height * rng.uniform(0.35, 0.7))
        x0 = slot * slot_width + int(rng.integers(1, max(2, slot_width - w)))
        y0 = int(rng.integers(1, max(2, height - h)))
        canvas = Image.new("L", (width, height), 0)
        _draw_shape(ImageDraw.Draw(canvas), spec.shape, (x0, y0, x0 + w, y0 + h), 1)
        mask = np.asarray(canvas, dtype=bool)
        hue = np.clip(np.array(spec.hue) + rng.integers(-25, 26, size=3), 0, 255)
        texture = rng.normal(0, 8, size=(int(mask.sum()), 3))
        pixels[mask] = np.clip(hue + texture, 0, 255).astype(np.uint8)
        masks[spec.part] = mask
    return Image.fromarray(pixels, "RGB"), masks


def _generate_entries(count: int, rng, size_range, two_part_fraction, prefix):
    """`count` annotated parts as (image stem, object, PartSpec, image, mask, instructions)."""
    entries = []
    image_index = 0
    while len(entries) < count:
        object_name = list(CATALOG)[rng.integers(len(CATALOG))]
        size = (int(rng.integers(*size_range)), int(rng.integers(*size_range)))
        image, masks = render_object(object_name, size, rng)
        stem = f"{prefix}{image_index:05d}_{rng.integers(16**6):06x}_o"
        image_index += 1
        specs = list(CATALOG[object_name])
        n_parts = 2 if (rng.random() < two_part_fraction and count - len(entries) >= 2) else 1
        for spec in [specs[i] for i in rng.permutation(len(specs))[:n_parts]]:
            entries.append((stem, object_name, spec, image, masks[spec.part], instructions_for(object_name, spec, rng)))
    return entries


def _write_folder(folder: str, split_name: str, entries, group_parts: bool) -> None:
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    records = []
    for stem, object_name, spec, image, mask, instructions in entries:
        file_stem = sample_id(stem + ".jpg", object_name, spec.part)
        image.save(os.path.join(folder, "images", file_stem + ".jpg"), quality=90)
        Image.fromarray(mask.astype(np.uint8), "L").save(os.path.join(folder, "masks", file_stem + ".png"))
        part = {
            "object": object_name,
            "part": spec.part,
            "affordance": spec.affordance,
            "action": spec.action,
            "instruction": instructions,
        }
        if group_parts and records and records[-1]["image_path"] == stem + ".jpg":
            records[-1]["part_list"].append(part)
        else:
            records.append({"image_path": stem + ".jpg", "part_list": [part]})
    with open(os.path.join(folder, f"data_{split_name}.json"), "w") as f:
        json.dump(records, f, indent=1)


def make_release(
    root: str,
    seed: int = 0,
    num_train: int = 18,
    num_test: int = 8,
    size_range: tuple = (96, 161),
    two_part_fraction: float = 0.75,
    group_parts: bool = False,
    with_all: bool = True,
) -> str:
    """Write a release with `num_train` train and `num_test` test entries (annotated parts) under `root`.

    The train subsets keep the release's proportions (200/600/1200/1800 of the
    train split) and are nested; `group_parts=True` puts both parts of an image
    in one json entry's `part_list` (the format allows it; the released json
    has one part per entry). `num_train=0` writes no `train/` folder (a test-only
    release: an empty split would be refused). Returns `root`.
    """
    rng = np.random.default_rng(seed)
    test = _generate_entries(num_test, rng, size_range, two_part_fraction, prefix="test")
    train = _generate_entries(num_train, rng, size_range, two_part_fraction, prefix="train")
    _write_folder(os.path.join(root, "test"), "test", test, group_parts)
    for n in TRAIN_SUBSETS if train else ():
        subset = train[: max(1, round(len(train) * n / TRAIN_SUBSETS[-1]))]
        _write_folder(os.path.join(root, "train", f"train{n}"), f"train{n}", subset, group_parts)
    if with_all:
        _write_folder(os.path.join(root, "all"), "all", train + test, group_parts)
    return root
