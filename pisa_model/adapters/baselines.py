"""The floors every model must beat: `full-image` and `centre-ellipse`. They read neither image nor instruction.

full-image
    Every pixel is foreground. Its IoU on a sample is the part's relative area.

centre-ellipse
    An axis-aligned ellipse centred on the image centre, with the image's aspect ratio (semi-axes
    `W * sqrt(a / pi)` and `H * sqrt(a / pi)`), whose relative area `a` is the mean relative area
    (mask pixels / image pixels) of the TRAIN split's masks, one per annotated part, of the same release.
    A pixel is inside when its centre (x + 0.5, y + 0.5) is. The ellipse's area is `a * W * H` up to the
    pixel grid; past `a = pi / 4` it no longer fits in the image and is clipped by the image border.

    Where `a` comes from, first match wins:
      `relative_area=A`   given directly (`--adapter-arg relative_area=0.12`);
      `train_masks=[...]` bool (H, W) masks, e.g. from another split or data set;
      `data_dir=D`        the train split of release or exported folder D (the evaluate command passes its
                          own `--data-dir`). A folder without a train split (the 60-entry sample, an export
                          of the test split alone) is refused with one line that says so and names
                          `relative_area` as the way out: no default area is made up.
"""

import math
from collections.abc import Iterable

import numpy as np

from .base import Adapter, check_batch


def ellipse_mask(height: int, width: int, relative_area: float) -> np.ndarray:
    """The centre ellipse covering `relative_area` of a (height, width) image, as a bool (height, width) array."""
    if not 0.0 <= relative_area <= 1.0:
        raise ValueError(f"relative_area must be in [0, 1], got {relative_area}")
    scale = math.sqrt(relative_area / math.pi)
    semi_x, semi_y = width * scale, height * scale
    if semi_x == 0 or semi_y == 0:
        return np.zeros((height, width), dtype=bool)
    y = (np.arange(height) + 0.5 - height / 2) / semi_y
    x = (np.arange(width) + 0.5 - width / 2) / semi_x
    return (y[:, None] ** 2 + x[None, :] ** 2) <= 1.0


def mean_relative_area(masks: Iterable) -> float:
    """Mean over masks of (foreground pixels / pixels)."""
    areas = [float(np.count_nonzero(mask)) / np.asarray(mask).size for mask in masks]
    if not areas:
        raise ValueError("no masks to take the mean relative area of")
    return float(np.mean(areas))


def train_split_masks(data_dir: str) -> list:
    """The masks of the train split of `data_dir`, one per annotated part (instruction variants share a mask)."""
    from instructpart_dataset import load_instructpart

    try:
        rows = load_instructpart(data_dir, config="trps", split="train")
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(
            f"centre-ellipse takes its area from the train split of {data_dir}, which cannot be read ({error}); "
            "give it with --adapter-arg relative_area=FRACTION"
        ) from None
    first_of_each = {}
    for index, sample in enumerate(rows["id"]):
        first_of_each.setdefault(sample, index)
    return [row["mask"] for row in rows.select(sorted(first_of_each.values())).select_columns(["mask"])]


class FullImageAdapter(Adapter):
    name = "full-image"

    def predict(self, images, instructions):
        check_batch(images, instructions)
        return [np.ones((image.height, image.width), dtype=bool) for image in images]


class CentreEllipseAdapter(Adapter):
    """`relative_area` (float in [0, 1]): the fraction of each image the ellipse covers."""

    def __init__(self, relative_area: float):
        ellipse_mask(1, 1, relative_area)  # validates the range
        self.relative_area = float(relative_area)
        self.name = f"centre-ellipse(relative_area={self.relative_area:.4f})"

    def predict(self, images, instructions):
        check_batch(images, instructions)
        return [ellipse_mask(image.height, image.width, self.relative_area) for image in images]


def _full_image(argument, *, device=None, dtype=None):
    if argument:
        raise ValueError(f"full-image takes no checkpoint (got {argument!r})")
    return FullImageAdapter()


def _centre_ellipse(
    argument,
    *,
    device=None,
    dtype=None,
    relative_area: float | None = None,
    train_masks: Iterable | None = None,
    data_dir: str | None = None,
):
    if argument:
        raise ValueError(f"centre-ellipse takes no checkpoint (got {argument!r})")
    if relative_area is None and train_masks is not None:
        relative_area = mean_relative_area(train_masks)
    if relative_area is None and data_dir is not None:
        relative_area = mean_relative_area(train_split_masks(data_dir))
    if relative_area is None:
        raise ValueError(
            "centre-ellipse needs the train split's mean mask area: give data_dir=RELEASE, train_masks=[...] "
            "or relative_area=FRACTION"
        )
    return CentreEllipseAdapter(relative_area)
