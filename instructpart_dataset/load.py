"""`load_instructpart`: one call for a release folder, an exported Hub folder or a Hub repo id."""

import logging
import os

import datasets
import numpy as np

from .instructpart import InstructPart
from .release import ReleaseError, is_release, scan_release
from .schema import check_config, check_split

MASK_FORMATS = ("numpy", "torch", "pil")


def is_hub_export(path: str) -> bool:
    """A folder whose README.md declares Parquet `configs:` (what `export` writes, what the Hub serves)."""
    readme = os.path.join(path, "README.md")
    if not os.path.isfile(readme):
        return False
    with open(readme, encoding="utf-8") as f:
        head = f.read(65536)
    return head.startswith("---") and "\nconfigs:" in head


def _load_release(path, config, split, cache_dir, num_proc) -> datasets.Dataset:
    index = scan_release(path)
    if split not in index.splits:
        present = ", ".join(sorted(index.splits)) or "none"
        raise ValueError(f"{path}: the release has no {split!r} split (present: {present})")
    builder = InstructPart(
        config_name=config,
        data_dir=os.path.abspath(path),
        release_signature=index.signature(),
        cache_dir=cache_dir,
        release_index=index,
    )
    try:
        builder.download_and_prepare(num_proc=num_proc)
    except datasets.exceptions.DatasetGenerationError as error:
        # datasets wraps what the generator raised; the release's own one-line message is the useful one.
        if isinstance(error.__cause__, ReleaseError):
            raise error.__cause__ from None
        raise
    return builder.as_dataset(split=split)


def _load_export(path, config, split, cache_dir) -> datasets.Dataset:
    # A corrupt file is reported once, in the error raised below, not also in datasets' own log line.
    parquet_log = logging.getLogger("datasets.packaged_modules.parquet.parquet")
    level = parquet_log.level
    parquet_log.setLevel(logging.CRITICAL)
    try:
        if os.path.isdir(path):
            # datasets' cache of a local folder survives a file's corruption (it is keyed on the card and
            # the file names): a damaged file would go unnoticed behind the earlier, intact copy.
            error = _unreadable_parquet(path, config)
            if error is not None:
                raise error
        return datasets.load_dataset(path, config, split=split, cache_dir=cache_dir)
    except ValueError as error:
        if "Unknown split" in str(error) or "Bad split" in str(error):
            raise ValueError(f"{path}: the {config} dataset has no {split!r} split") from None
        raise
    except datasets.exceptions.DatasetGenerationError as error:
        raise _unreadable_export(path, config, split, error) from None
    finally:
        parquet_log.setLevel(level)


def _unreadable_parquet(path, config) -> ValueError | None:
    """A ValueError naming the first Parquet file of the config's folder (else of `path`) whose footer does
    not read (a truncated or damaged file), or None. Reads footers only."""
    import glob

    import pyarrow.parquet as pq

    folder = os.path.join(path, config) if os.path.isdir(os.path.join(path, config)) else path
    for file in sorted(glob.glob(os.path.join(glob.escape(folder), "**", "*.parquet"), recursive=True)):
        try:
            pq.read_metadata(file)
        except Exception as unreadable:  # pyarrow reports a corrupt file through several exception types
            reason = " ".join(str(unreadable).split())
            return ValueError(f"{file}: not a readable Parquet file ({type(unreadable).__name__}: {reason})")
    return None


def _unreadable_export(path, config, split, error) -> ValueError:
    """The one-line reason datasets could not prepare an export's split: the damaged Parquet file where one
    is found (datasets only logs its name), else the error datasets wrapped."""
    if os.path.isdir(path):
        unreadable = _unreadable_parquet(path, config)
        if unreadable is not None:
            return unreadable
    cause = error.__cause__ or error
    return ValueError(f"{path}: the {config} {split} split cannot be read ({type(cause).__name__}: {cause})")


def _torch_masks(batch):
    import torch

    batch["mask"] = [torch.from_numpy(np.array(mask, dtype=bool)) for mask in batch["mask"]]
    return batch


def load_instructpart(
    path: str,
    config: str = "trps",
    split: str = "test",
    *,
    mask_format: str = "numpy",
    cache_dir: str | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Load one split of InstructPart as a `datasets.Dataset`, one row per (entry, instruction variant).

    Args:
        path: a local copy of the official release (`test/`, `train/train<N>/`, `all/`), a folder
            written by `python -m instructpart_dataset export`, or a Hub dataset repo id.
        config: `"trps"` (task instructions: human, gpt4) or `"orps"` (part references).
        split: `"test"`, `"train"` (= train1800) or a nested subset `"train200"`, `"train600"`,
            `"train1200"`, `"train1800"`.
        mask_format: `"numpy"` (bool (H, W) arrays), `"torch"` (bool (H, W) tensors) or `"pil"`
            (mode-"1" images). `image` is always a PIL RGB image.
        cache_dir: where `datasets` caches the prepared Arrow files.
        num_proc: processes used to prepare a release folder.

    Columns: id, image, mask, object, part, affordance, action, instruction, instruction_type,
    train_subset (the smallest of 200/600/1200/1800 whose folder holds the row; None on test).
    """
    check_config(config)
    check_split(split)
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"unknown mask_format {mask_format!r}: expected one of {', '.join(MASK_FORMATS)}")
    stored_split = "train" if split.startswith("train") else split
    if os.path.isdir(path) and is_hub_export(path):
        dataset = _load_export(path, config, stored_split, cache_dir)
    elif os.path.isdir(path) and is_release(path):
        dataset = _load_release(path, config, stored_split, cache_dir, num_proc)
    elif os.path.exists(path):
        raise ValueError(
            f"{path}: neither a release folder (test/, train/train<N>/, all/) nor an exported dataset "
            "(README.md with configs)"
        )
    else:
        dataset = datasets.load_dataset(path, config, split=stored_split, cache_dir=cache_dir)

    if split != stored_split:
        limit = int(split[len("train") :])
        dataset = dataset.filter(
            lambda subset: subset is not None and subset <= limit,
            input_columns="train_subset",
            desc=f"Selecting {split}",
        )
    if mask_format == "numpy":
        return dataset.with_format("numpy", columns=["mask"], output_all_columns=True)
    if mask_format == "torch":
        return dataset.with_transform(_torch_masks)
    return dataset
