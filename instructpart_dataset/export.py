"""Export a release folder as a script-free Hub dataset: Parquet shards per config/split + a card.

    OUT/README.md                           card; YAML `configs:` (trps default, orps) and `dataset_info`
    OUT/trps/test-00000-of-00001.parquet    one row per (entry, instruction variant)
    OUT/orps/train-00000-of-00002.parquet   ...

`load_dataset(OUT, "trps", split="test")` then works offline, and so does
`load_dataset("instructpart", "trps")` run beside a folder named `instructpart`.
Each image and mask is decoded and checked once for both configs. The export is
written to a sibling temporary folder and renamed into place at the end
(`files.publish_folder`): a killed export leaves no folder that looks complete and the
next export of the same output cleans what it left; two exports into one output never
overlap (the second fails at once); `--overwrite` replaces only an earlier export, and
only once the new one is whole.
"""

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .card import write_card
from .load import is_hub_export
from .release import ReleaseError, read_sample_files, rows_of, scan_release
from .schema import CONFIGS, FEATURES
from .toolbox.files import publish_folder

# The Hub's own default for push_to_hub shards; keeps each Parquet file streamable.
MAX_SHARD_BYTES = 500 << 20
# Small row groups of images let the Hub viewer and streaming readers fetch a few rows at a time.
ROW_GROUP_ROWS = 100
# JPEG and PNG bytes are compressed already: snappy on them costs time and saves nothing.
COMPRESSION = {name: "snappy" for name in FEATURES} | {"image.bytes": "none", "mask.bytes": "none"}
# Entries decoded ahead per worker: bounds memory while both cores decode (PIL releases the GIL).
PREFETCH_PER_WORKER = 4


class _ShardWriter:
    """Streams the rows of one config/split into Parquet shards of about `max_bytes`, a row group at a time.

    Rows go straight to pyarrow with the features' schema (which carries datasets' feature metadata):
    building a `datasets.Dataset` per shard would hash every image for a fingerprint nobody uses.
    """

    def __init__(self, folder: str, split: str, max_bytes: int):
        self.folder, self.split, self.max_bytes = folder, split, max_bytes
        self.schema = FEATURES.arrow_schema
        self.writer, self.shard_bytes, self.rows = None, 0, []
        self.paths, self.num_rows, self.num_bytes = [], 0, 0

    def add(self, rows: list, size: int) -> None:
        if self.writer is not None and self.shard_bytes + size > self.max_bytes:
            self._close_shard()
        if self.writer is None:
            os.makedirs(self.folder, exist_ok=True)
            self.paths.append(os.path.join(self.folder, f"{self.split}-{len(self.paths):05d}.parquet"))
            self.writer = pq.ParquetWriter(self.paths[-1], self.schema, compression=COMPRESSION)
        self.rows.extend(rows)
        self.shard_bytes += size
        if len(self.rows) >= ROW_GROUP_ROWS:
            self._write_rows()

    def _write_rows(self) -> None:
        if self.rows:
            table = pa.Table.from_pylist([FEATURES.encode_example(row) for row in self.rows], schema=self.schema)
            self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            self.num_rows += table.num_rows
            self.num_bytes += table.nbytes
            self.rows = []

    def _close_shard(self) -> None:
        self._write_rows()
        self.writer.close()
        self.writer, self.shard_bytes = None, 0

    def finish(self) -> list:
        """Close and give shards their final `-NNNNN-of-MMMMM` names; returns the final paths."""
        if self.writer is not None:
            self._close_shard()
        total = len(self.paths)
        final = []
        for k, path in enumerate(self.paths):
            target = os.path.join(self.folder, f"{self.split}-{k:05d}-of-{total:05d}.parquet")
            os.replace(path, target)
            final.append(target)
        return final


def export_release(
    release_dir: str,
    output_dir: str,
    *,
    overwrite: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    num_workers: int | None = None,
) -> dict:
    """Write the Hub dataset folder for the release at `release_dir`; returns `{config: {split: rows}}`.

    `num_workers` threads decode and check images (default: one per CPU core, at most 8).
    Raises `FileExistsError` for an existing output (without `overwrite`, or one this function did not
    write), `ValueError` for an output that is, holds or lies inside the release, `ReleaseError` for bad
    release files and `OutputBusyError` while another export writes the same output.
    """
    num_workers = num_workers or min(8, os.cpu_count() or 1)
    output_dir = os.path.abspath(output_dir)
    index = scan_release(release_dir)
    _check_apart(release_dir, output_dir)
    if not index.splits:
        raise ReleaseError(f"{release_dir}: no train or test split to export (all/ is a cross-check only)")
    with publish_folder(output_dir, overwrite=overwrite, replaceable=_replaceable) as staging:
        counts = _write_shards(index, staging, max_shard_bytes, num_workers)
        write_card(staging, counts, index)
    return {
        config: {split: info["num_examples"] for split, info in splits.items()} for config, splits in counts.items()
    }


def _check_apart(release_dir: str, output_dir: str) -> None:
    """Refuse an output that would replace, or be written into, the release it is made from."""
    release, output = os.path.realpath(release_dir), os.path.realpath(output_dir)
    if output == release:
        raise ValueError(f"{output_dir}: the output is the release folder itself; choose another output")
    if os.path.commonpath([release, output]) == release:
        raise ValueError(f"{output_dir}: the output lies inside the release folder {release}; choose another output")
    if os.path.commonpath([release, output]) == output:
        raise ValueError(f"{output_dir}: the output holds the release folder {release}; choose another output")


def _replaceable(path: str) -> bool:
    """`overwrite` replaces an earlier export (or an empty folder), never an unrelated file or folder."""
    return os.path.isdir(path) and (is_hub_export(path) or not os.listdir(path))


def _checked_files(samples: list, num_workers: int):
    """(sample, files) in order, decoded by `num_workers` threads a bounded window ahead."""
    if num_workers <= 1:
        for sample in samples:
            yield sample, read_sample_files(sample)
        return
    pool, window = ThreadPoolExecutor(num_workers), deque()
    try:
        for sample in samples:
            window.append((sample, pool.submit(read_sample_files, sample)))
            if len(window) >= PREFETCH_PER_WORKER * num_workers:
                done, future = window.popleft()
                yield done, future.result()
        while window:
            done, future = window.popleft()
            yield done, future.result()
    finally:
        # On an error or an interrupt, entries not yet started are dropped rather than decoded for nothing.
        pool.shutdown(wait=True, cancel_futures=True)


def _write_shards(index, staging: str, max_shard_bytes: int, num_workers: int) -> dict:
    counts = {config: {} for config in CONFIGS}
    total = sum(len(samples) for samples in index.splits.values())
    # disable=None: a bar on a terminal, none in a log (where it is lines of carriage returns).
    with tqdm(total=total, desc="Exporting InstructPart", unit="entry", disable=None) as progress:
        for split, samples in index.splits.items():
            writers = {
                config: _ShardWriter(os.path.join(staging, config), split, max_shard_bytes) for config in CONFIGS
            }
            for sample, files in _checked_files(samples, num_workers):
                size = len(files["image"]["bytes"]) + len(files["mask"]["bytes"])
                for config, types in CONFIGS.items():
                    writers[config].add(rows_of(sample, files, types), size * len(types))
                progress.update(1)
            for config, writer in writers.items():
                paths = writer.finish()
                counts[config][split] = {
                    "num_examples": writer.num_rows,
                    "num_bytes": writer.num_bytes,
                    "download_bytes": sum(os.path.getsize(path) for path in paths),
                    "files": [os.path.relpath(path, staging) for path in paths],
                }
    return counts
