"""InstructPart rows -> PISA model inputs: the row loader and the collator shared by training, evaluation and the demo.

rows = load_rows(data_dir, configs=("trps", "orps"), split="train")   # one datasets.Dataset
collate = PisaCollator(processor, with_labels=True)
batch = collate([rows[i] for i in range(8)])     # processor tensors + "id", "instruction_type" lists
outputs = model(**model.prepare_inputs(batch))
"""

import importlib.util
import os

from instructpart_dataset.schema import CONFIGS

META_COLUMNS = ("id", "instruction_type", "object", "part")


def parse_configs(configs) -> tuple:
    """ "trps,orps" or ["trps", "orps"] -> ("trps", "orps"); unknown names raise one-line ValueErrors."""
    names = [c.strip() for c in configs.split(",")] if isinstance(configs, str) else [str(c).strip() for c in configs]
    names = [c for c in names if c]
    if not names:
        raise ValueError("no config given: expected a comma-separated subset of " + ", ".join(CONFIGS))
    for name in names:
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}: expected one of {', '.join(CONFIGS)}")
    return tuple(dict.fromkeys(names))


def load_rows(data_dir: str, configs=("trps", "orps"), split: str = "train", **load_kwargs):
    """The rows of every config in `configs` for `split`, concatenated (TRPS rows first), masks as numpy bool.

    A `datasets.Dataset` (`load_instructpart`). Where `datasets` is not installed (an offline GPU node with a
    preinstalled stack, `bench/gpu_check.sh`), a release folder is read straight from its files: the same rows
    in the same order, as `ReleaseRows`; anything else then needs `datasets`, said in one line.
    """
    names = parse_configs(configs)
    if importlib.util.find_spec("datasets") is None:
        return _release_rows(data_dir, names, split)
    import datasets

    from instructpart_dataset import load_instructpart

    parts = [load_instructpart(data_dir, config=c, split=split, **load_kwargs) for c in names]
    if len(parts) == 1:
        return parts[0]
    return datasets.concatenate_datasets(parts).with_format("numpy", columns=["mask"], output_all_columns=True)


def _release_rows(data_dir: str, configs: tuple, split: str):
    from instructpart_dataset.release import ReleaseRows, is_release

    if not (os.path.isdir(data_dir) and is_release(data_dir)):
        raise ValueError(
            f"{data_dir}: without the datasets package only a release folder can be read "
            "(an exported folder or a Hub dataset needs it: pip install datasets)"
        )
    return ReleaseRows(data_dir, config=configs, split=split)


class PisaCollator:
    """Turns a list of rows (dicts with `image`, `instruction`, and `mask` when `with_labels`) into one batch.

    The batch holds the processor's tensors (see `PisaProcessor.__call__`), plus the rows' `id`,
    `instruction_type`, `object` and `part` as lists (absent columns are skipped), so that predictions can be
    written and scored per sample.
    """

    def __init__(self, processor, with_labels: bool = True):
        self.processor = processor
        self.with_labels = with_labels

    def __call__(self, rows: list) -> dict:
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        for index, row in enumerate(rows):
            missing = [k for k in ("image", "instruction") + (("mask",) if self.with_labels else ()) if k not in row]
            if missing:
                raise ValueError(f"row {row.get('id', index)!r} lacks {', '.join(missing)}")
        batch = dict(
            self.processor(
                images=[row["image"] for row in rows],
                text=[row["instruction"] for row in rows],
                masks=[row["mask"] for row in rows] if self.with_labels else None,
            )
        )
        for column in META_COLUMNS:
            if all(column in row for row in rows):
                batch[column] = [row[column] for row in rows]
        return batch


__all__ = ["META_COLUMNS", "PisaCollator", "load_rows", "parse_configs"]
