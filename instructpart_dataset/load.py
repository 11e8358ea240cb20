"""`load_instructpart`: one call for a release folder, an exported Hub folder or a Hub repo id."""

import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .instructpart import InstructPart
from .release import ReleaseError, is_release, scan_release
from .schema import check_config, check_split

MASK_FORMATS = ("numpy", "torch", "pil")


def is_hub_export(path: str) -> bool:
    """A folder whose README.md declares Parquet `configs:` (what `export` writes, what the Hub serves)."""
    readme = os.path.join(path, "README.md")
    if not os.path.isfile(readme):
        return False
    with open(readme, encoding="utf-8", errors="replace") as f:  # sniffing only: the card's YAML is ASCII
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
    # Checked before datasets reads them: its own errors name no file (or log one and then fail elsewhere),
    # and its cache of a local folder is keyed by the card alone, so it would serve a file changed since.
    check_parquet_files(path, config, split)
    return datasets.load_dataset(path, config, split=split, cache_dir=cache_dir)


def _export_builder(path, config) -> datasets.DatasetBuilder:
    try:
        return datasets.load_dataset_builder(path, config)
    except datasets.exceptions.DataFilesNotFoundError:
        raise ValueError(f"{path}: the card's {config} config names data files that do not exist") from None


def data_files(path, config) -> dict:
    """{split: [files]} that a Hub folder's (or repo's) card declares for `config`."""
    return {split: list(files) for split, files in (_export_builder(path, config).config.data_files or {}).items()}


def check_parquet_files(path, config, split) -> None:
    """Raise one line naming what is wrong with an exported folder's Parquet files for `config`/`split`: no
    such split, no files, a corrupt file, no rows, or other row counts than the card's `dataset_info` says."""
    builder = _export_builder(path, config)
    files = list((builder.config.data_files or {}).get(split, []))
    if not files:
        raise ValueError(f"{path}: the {config} dataset has no {split!r} split (no data files)")
    rows = 0
    for file in files:
        try:
            rows += pq.ParquetFile(file).metadata.num_rows
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{file}: not a readable Parquet file ({error})") from None
    if rows == 0:
        raise ValueError(f"{', '.join(files)}: no {config} rows in split {split!r}")
    declared = builder.info.splits or {}
    declared = declared[split].num_examples if split in declared else rows
    if declared != rows:
        raise ValueError(
            f"{os.path.join(path, 'README.md')}: dataset_info declares {declared} {config} {split} rows, "
            f"its data files hold {rows}"
        )


def _data_files(path, config, split) -> str:
    """The files a Hub folder or repo declares for one config/split, for messages."""
    try:
        files = data_files(path, config).get(split, [])
    except Exception:  # only a message depends on it: name the folder when the files cannot be listed
        return path
    return ", ".join(str(file) for file in files) or path


def _empty_split_message(path, config, split, stored_split) -> str:
    """A split with no rows is an error: a score of nothing is not zero. An empty json of a release folder
    fails earlier, naming the file (`release._read_json`); what is left is named here."""
    if os.path.isdir(path) and is_release(path):  # only a subset can come out empty: none of its folders exist
        limit = split[len("train") :]
        return f"{os.path.join(path, 'train')}: no train<N>/ folder with N <= {limit}, so split {split!r} is empty"
    return f"{_data_files(path, config, stored_split)}: no {config} rows in split {split!r}"


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
    if len(dataset) == 0:
        raise ValueError(_empty_split_message(path, config, split, stored_split))
    if mask_format == "numpy":
        return dataset.with_format("numpy", columns=["mask"], output_all_columns=True)
    if mask_format == "torch":
        return dataset.with_transform(_torch_masks)
    return dataset
