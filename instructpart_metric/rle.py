"""COCO run-length encoding of binary masks, as lmms-eval's segmentation models write them.

    {"counts": "<compressed string>", "size": [H, W]}     # COCO's compressed RLE (counts as str for JSON)
    {"counts": [r0, r1, ...], "size": [H, W]}              # uncompressed: run lengths, a background run first

Runs go down the columns (Fortran order). The codec is small and pure numpy so that a malformed answer is refused
in one line: pycocotools decodes a truncated string without complaint (into uninitialised memory), and the scorer
must count such an answer as malformed, not score noise. The tests check both directions against pycocotools.
"""

import numpy as np


def _runs(mask: np.ndarray) -> list:
    """Run lengths of a bool (H, W) mask in column order, starting with a (possibly empty) background run."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return [0]
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _compress(runs: list) -> str:
    """COCO's string form of run lengths (maskApi.c rleToString): each run, after the first two as the
    difference to the run two before, in 5-bit groups with a continuation bit, offset by 48."""
    out = []
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            if more:
                chunk |= 0x20
            out.append(chr(chunk + 48))
    return "".join(out)


def _decompress(text: str) -> list:
    """The run lengths of COCO's string form; ValueError on a character outside it or a dangling group."""
    runs, value, shift, more = [], 0, 0, False
    for character in text:
        code = ord(character) - 48
        if not 0 <= code < 64:
            raise ValueError(f"not a COCO RLE: character {character!r} in counts")
        value |= (code & 0x1F) << shift
        shift += 5
        more = bool(code & 0x20)
        if more:
            continue
        if code & 0x10:
            value |= -1 << shift  # sign extension
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value, shift = 0, 0
    if more:
        raise ValueError("not a COCO RLE: counts end inside a run")
    return runs


def encode_rle(mask) -> dict:
    """bool (H, W) mask -> `{"counts": str, "size": [H, W]}` (what pycocotools.mask.encode gives, counts as str)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    return {"counts": _compress(_runs(mask != 0)), "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_rle(rle) -> np.ndarray:
    """`{"counts": str | list[int], "size": [H, W]}` -> bool (H, W) mask; ValueError (one line) when it is not a
    valid RLE: a missing key, a size that is not two non-negative integers, a negative run, or runs that do not
    cover exactly H·W pixels."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise ValueError("not a COCO RLE: expected an object with 'counts' and 'size'")
    size = rle["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_count(n) for n in size):
        raise ValueError(f"not a COCO RLE: size must be [H, W] of non-negative integers, got {size!r}")
    height, width = size
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        runs = _decompress(counts)
    elif isinstance(counts, list):
        runs = counts
    else:
        raise ValueError(f"not a COCO RLE: counts must be a string or a list, got {type(counts).__name__}")
    if not all(_is_count(run) for run in runs):
        raise ValueError("not a COCO RLE: a run length is negative or not an integer")
    if sum(runs) != height * width:
        raise ValueError(
            f"not a COCO RLE: its runs cover {sum(runs)} pixels, its size {height}x{width} has {height * width}"
        )
    values = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(values, runs)
    return flat.reshape((height, width), order="F")


__all__ = ["decode_rle", "encode_rle"]
