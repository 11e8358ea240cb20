"""Reading and checking a local copy of the official InstructPart release.

Layout (any subset of the three top folders):

    <root>/test/                     images/, masks/, data_test.json
    <root>/train/train<N>/           images/, masks/, data_train<N>.json   N in 200, 600, 1200, 1800
    <root>/all/                      images/, masks/, data_all.json        (train ∪ test, cross-check only)

Each json is a list of `{"image_path": "<stem>.jpg", "part_list": [{object, part,
affordance, action, instruction: [6 strings]}, ...]}`; the files of one annotated
part are `images/<id>.jpg` and `masks/<id>.png` with `id = sample_id(...)`.

`scan_release` reads only the json files and the directory listings (cheap);
`read_sample_files` decodes one sample's image and mask once, checks them and
returns the bytes to store. Every problem raises `ReleaseError` with one line
naming the file or entry. `ReleaseRows` gives the rows `load_instructpart` gives
for a release folder, read straight from its files without `datasets` (what an
offline GPU node without `datasets` trains and evaluates on).

Orientation: a JPEG's EXIF Orientation tag is honoured, as `datasets.Image`
decoding, browsers and annotation tools (LabelMe) do: the image is the upright
picture people annotated, and its mask must have the upright size. Image bytes
are stored unchanged, so every consumer that honours EXIF sees the same pixels.
"""

import io
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from .schema import CONFIGS, ENTRY_FIELDS, INSTRUCTION_TYPES, TRAIN_SUBSETS, check_config, check_split, sample_id

logger = logging.getLogger(__name__)

ORIENTATION_TAG = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ReleaseError(ValueError):
    """A problem with the release files; the message is one line naming the file or entry."""


@dataclass(frozen=True)
class ReleaseSample:
    """One annotated part of one image: one row per instruction variant later."""

    id: str
    split: str  # "test" or "train"
    folder: str  # the split folder holding images/ and masks/
    image_name: str  # the json's image_path (original image name)
    object: str
    part: str
    affordance: str
    action: str
    instructions: tuple
    train_subset: int | None = None

    @property
    def image_file(self) -> str:
        return os.path.join(self.folder, "images", self.id + ".jpg")

    @property
    def mask_file(self) -> str:
        return os.path.join(self.folder, "masks", self.id + ".png")


@dataclass
class ReleaseIndex:
    """The samples of each split present in a release, plus what the cross-checks found."""

    root: str
    splits: dict = field(default_factory=dict)  # "test"/"train" -> list[ReleaseSample]
    warnings: list = field(default_factory=list)

    def signature(self) -> str:
        """Changes whenever a json or a listed image/mask file changes (size or mtime): keys the cache."""
        import hashlib

        digest = hashlib.sha256()
        for split in sorted(self.splits):
            for sample in self.splits[split]:
                for path in (sample.image_file, sample.mask_file):
                    stat = os.stat(path)
                    digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
                digest.update(repr(sample).encode())
        return digest.hexdigest()[:16]


def _split_folders(root: str) -> dict:
    """{folder label: (folder path, json path)} for every split folder present under `root`."""
    candidates = {"test": os.path.join(root, "test"), "all": os.path.join(root, "all")}
    for n in TRAIN_SUBSETS:
        candidates[f"train{n}"] = os.path.join(root, "train", f"train{n}")
    found = {}
    for label, folder in candidates.items():
        if os.path.isdir(folder):
            json_path = os.path.join(folder, f"data_{label}.json")
            if not os.path.isfile(json_path):
                raise ReleaseError(f"{json_path}: missing (a release split folder needs its data_{label}.json)")
            found[label] = (folder, json_path)
    return found


def is_release(path: str) -> bool:
    """True when `path` holds at least one recognisable split folder of the release layout."""
    try:
        return os.path.isdir(path) and bool(_split_folders(path))
    except ReleaseError:
        return True  # a release with a broken split: let the reader say what is wrong


def _read_json(json_path: str) -> list:
    try:
        # utf-8-sig: a byte-order mark some editors write is not an error.
        with open(json_path, encoding="utf-8-sig") as f:
            entries = json.load(f)
    except UnicodeDecodeError as error:
        raise ReleaseError(
            f"{json_path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}: "
            f"{error.reason}); save the file as UTF-8"
        ) from None
    except json.JSONDecodeError as error:
        raise ReleaseError(
            f"{json_path}: malformed JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    except OSError as error:
        raise ReleaseError(f"{json_path}: cannot be read ({error.strerror})") from None
    if not isinstance(entries, list):
        raise ReleaseError(f"{json_path}: expected a JSON list of entries, got {type(entries).__name__}")
    if not entries:
        # Every reader (loader, export, summary, score, evaluate) indexes the release through here.
        raise ReleaseError(f"{json_path}: no entries (an empty split cannot be loaded, exported or scored)")
    return entries


def _samples_of(label: str, folder: str, json_path: str) -> list:
    split = "test" if label == "test" else ("all" if label == "all" else "train")
    subset = int(label[len("train") :]) if split == "train" else None
    samples, seen = [], {}
    for index, entry in enumerate(_read_json(json_path)):
        where = f"{json_path}: entry {index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("image_path"), str):
            raise ReleaseError(f"{where}: missing field 'image_path'")
        where = f"{json_path}: entry {index} ({entry['image_path']})"
        parts = entry.get("part_list")
        if not isinstance(parts, list) or not parts:
            raise ReleaseError(f"{where}: 'part_list' must be a non-empty list")
        for part in parts:
            missing = [name for name in ENTRY_FIELDS if not isinstance(part, dict) or name not in part]
            if missing:
                raise ReleaseError(f"{where}: part entry missing field {', '.join(repr(m) for m in missing)}")
            for name in ENTRY_FIELDS[:4]:
                if not isinstance(part[name], str) or not part[name].strip():
                    raise ReleaseError(f"{where}: field {name!r} must be a non-empty string")
            instructions = part["instruction"]
            if not isinstance(instructions, list) or len(instructions) != 6:
                got = len(instructions) if isinstance(instructions, list) else type(instructions).__name__
                raise ReleaseError(f"{where}: 'instruction' must be a list of 6 strings, got {got}")
            if not all(isinstance(text, str) and text.strip() for text in instructions):
                raise ReleaseError(f"{where}: 'instruction' must hold 6 non-empty strings")
            sid = sample_id(entry["image_path"], part["object"], part["part"])
            if sid in seen:
                raise ReleaseError(f"{json_path}: entries {seen[sid]} and {index} both map to id {sid!r}")
            seen[sid] = index
            samples.append(
                ReleaseSample(
                    id=sid,
                    split=split,
                    folder=folder,
                    image_name=entry["image_path"],
                    object=part["object"],
                    part=part["part"],
                    affordance=part["affordance"],
                    action=part["action"],
                    instructions=tuple(instructions),
                    train_subset=subset,
                )
            )
    for sample in samples:
        for path in (sample.image_file, sample.mask_file):
            if not os.path.isfile(path):
                raise ReleaseError(f"{path}: missing file for sample {sample.id!r} listed in {json_path}")
    return samples


def _annotation(sample: ReleaseSample) -> tuple:
    return (sample.object, sample.part, sample.affordance, sample.action, sample.instructions)


def scan_release(root: str) -> ReleaseIndex:
    """Index the release at `root` (json files and listings only; no image is decoded)."""
    if not os.path.isdir(root):
        raise ReleaseError(f"{root}: not a folder")
    folders = _split_folders(root)
    if not folders:
        raise ReleaseError(
            f"{root}: no recognisable split (expected test/, train/train<N>/ or all/ with data_<split>.json)"
        )
    index = ReleaseIndex(root=os.path.abspath(root))
    if "test" in folders:
        index.splits["test"] = _samples_of("test", *folders["test"])

    # Subsets are nested: keep each id once, tagged with the smallest subset holding it.
    train = {}
    for n in TRAIN_SUBSETS:
        label = f"train{n}"
        if label not in folders:
            continue
        subset_samples = _samples_of(label, *folders[label])
        ids = {sample.id for sample in subset_samples}
        dropped = [sid for sid in train if sid not in ids]
        if dropped:
            index.warnings.append(
                f"{folders[label][1]}: {len(dropped)} ids of a smaller subset are absent (e.g. {dropped[0]!r}); "
                "subsets are expected to be nested"
            )
        for sample in subset_samples:
            if sample.id in train:
                if _annotation(train[sample.id]) != _annotation(sample):
                    index.warnings.append(
                        f"{folders[label][1]}: sample {sample.id!r} is annotated differently than in "
                        f"train{train[sample.id].train_subset}; keeping the smaller subset's annotation"
                    )
            else:
                train[sample.id] = sample
    if train:
        index.splits["train"] = list(train.values())

    if "test" in index.splits and "train" in index.splits:
        overlap = sorted({s.id for s in index.splits["test"]} & set(train))
        if overlap:
            index.warnings.append(f"{root}: {len(overlap)} ids are in both train and test (e.g. {overlap[0]!r})")

    if "all" in folders:
        index.warnings.extend(_cross_check_all(index, *folders["all"]))
    for message in index.warnings:
        logger.warning(message)
    return index


def _cross_check_all(index: ReleaseIndex, folder: str, json_path: str) -> list:
    """Disagreements between all/ and the train and test splits (all/ is never a split of its own)."""
    everything = {s.id: s for s in _samples_of("all", folder, json_path)}
    split_samples = {s.id: s for samples in index.splits.values() for s in samples}
    problems = []
    if not split_samples:
        return [f"{json_path}: all/ is present but neither train/ nor test/ is; all/ is not loaded as a split"]
    missing = sorted(set(split_samples) - set(everything))
    extra = sorted(set(everything) - set(split_samples))
    differing = sorted(
        sid
        for sid in set(everything) & set(split_samples)
        if _annotation(everything[sid]) != _annotation(split_samples[sid])
    )
    # A release folder may hold only some splits: all/ then legitimately has more.
    if extra and {"test", "train"} <= set(index.splits):
        problems.append(f"{json_path}: {len(extra)} ids in all/ are in neither train nor test (e.g. {extra[0]!r})")
    if missing:
        problems.append(f"{json_path}: {len(missing)} ids of train/test are absent from all/ (e.g. {missing[0]!r})")
    if differing:
        problems.append(f"{json_path}: {len(differing)} ids are annotated differently in all/ (e.g. {differing[0]!r})")
    return problems


def _open_checked(path: str, kind: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise ReleaseError(f"{path}: missing {kind} file") from None
    except Exception as error:  # PIL raises several types for corrupt or truncated files
        raise ReleaseError(f"{path}: corrupt or unreadable {kind} ({error})") from None
    return image


def upright_size(image: Image.Image) -> tuple:
    """(width, height) of the image as shown, after its EXIF orientation."""
    orientation = image.getexif().get(ORIENTATION_TAG, 1)
    width, height = image.size
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def mask_from_array(values: np.ndarray, path: str) -> np.ndarray:
    """Bool (H, W) mask from the release's stored values: {0, 1} or {0, 255}; anything else is refused."""
    if values.ndim != 2:
        raise ReleaseError(f"{path}: mask must be single-channel, got shape {values.shape}")
    if values.dtype == bool:
        return values
    peak = int(values.max()) if values.size else 0
    if peak > 1:
        stray = (values != 0) & (values != 255)
        if np.count_nonzero(stray):
            found = np.unique(values[(values != 0) & (values != 1)] if peak != 255 else values[stray])[:5]
            raise ReleaseError(f"{path}: mask values must be {{0,1}} or {{0,255}}, found {found.tolist()}")
    return values > 0


def encode_mask(mask: np.ndarray) -> bytes:
    """A mode-"1" PNG of a bool mask: the smallest lossless form, decoded by datasets to bool arrays."""
    buffer = io.BytesIO()
    # compress_level 1: mode-"1" data is 8 pixels a byte already; higher levels cost time, save little.
    Image.fromarray(mask).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def read_sample_files(sample: ReleaseSample) -> dict:
    """Decode and check one sample's image and mask once.

    Returns `{"image": {"bytes", "path"}, "mask": {"bytes", "path"}}` ready for `datasets.Image`
    features: the image bytes unchanged (non-RGB images re-encoded losslessly as RGB PNG, so
    every row decodes to RGB) and the mask as a mode-"1" PNG.
    """
    try:
        with open(sample.image_file, "rb") as f:
            image_bytes = f.read()
    except OSError as error:
        raise ReleaseError(f"{sample.image_file}: cannot be read ({error.strerror})") from None
    try:
        image = Image.open(io.BytesIO(image_bytes))
        image.load()
    except Exception as error:
        raise ReleaseError(f"{sample.image_file}: corrupt or unreadable image ({error})") from None
    size = upright_size(image)
    if image.mode != "RGB":
        buffer = io.BytesIO()
        ImageOps.exif_transpose(image).convert("RGB").save(buffer, format="PNG")
        image_bytes = buffer.getvalue()

    mask_image = _open_checked(sample.mask_file, "mask")
    if mask_image.size != size:
        raise ReleaseError(
            f"{sample.mask_file}: mask size {mask_image.size[0]}x{mask_image.size[1]} differs from "
            f"image size {size[0]}x{size[1]} ({os.path.basename(sample.image_file)})"
        )
    mask = mask_from_array(np.asarray(mask_image), sample.mask_file)
    return {
        "image": {"bytes": image_bytes, "path": os.path.basename(sample.image_file)},
        "mask": {"bytes": encode_mask(mask), "path": sample.id + ".png"},
    }


def rows_of(sample: ReleaseSample, files: dict, instruction_types) -> list:
    """The dataset rows of one checked sample, one per instruction variant, in release order."""
    return [
        {
            "id": sample.id,
            "image": files["image"],
            "mask": files["mask"],
            "object": sample.object,
            "part": sample.part,
            "affordance": sample.affordance,
            "action": sample.action,
            "instruction": sample.instructions[INSTRUCTION_TYPES.index(kind)],
            "instruction_type": kind,
            "train_subset": sample.train_subset,
        }
        for kind in instruction_types
    ]


ROW_COLUMNS = ("id", "image", "mask", "object", "part", "affordance", "action", "instruction", "instruction_type")


class ReleaseRows:
    """One split of a release folder as rows, read from its files on access, without `datasets`.

    `config` is a config name or a sequence of them (their rows one config after the other, as
    `pisa_model.data.load_rows` concatenates them). The rows, their order and their values are those of
    `load_instructpart(path, config, split)` (numpy masks):
    `image` a PIL RGB image (EXIF orientation applied), `mask` a bool (H, W) array, the label columns, the
    instruction and its type, `train_subset`. Each access reads and checks the sample's files
    (`read_sample_files`), so a problem is a `ReleaseError` naming the file.
    """

    column_names = (*ROW_COLUMNS, "train_subset")

    def __init__(self, path: str, config="trps", split: str = "test"):
        configs = (config,) if isinstance(config, str) else tuple(config)
        for name in configs:
            check_config(name)
        check_split(split)
        index = scan_release(path)
        stored_split = "train" if split.startswith("train") else split
        if stored_split not in index.splits:
            present = ", ".join(sorted(index.splits)) or "none"
            raise ValueError(f"{path}: the release has no {stored_split!r} split (present: {present})")
        samples = index.splits[stored_split]
        if split != stored_split:
            limit = int(split[len("train") :])
            samples = [s for s in samples if s.train_subset is not None and s.train_subset <= limit]
            if not samples:
                folder = os.path.join(path, "train")
                raise ValueError(f"{folder}: no train<N>/ folder with N <= {limit}, so split {split!r} is empty")
        self._rows = [(sample, kind) for name in configs for sample in samples for kind in CONFIGS[name]]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict:
        sample, kind = self._rows[index]
        row = rows_of(sample, read_sample_files(sample), (kind,))[0]
        image = Image.open(io.BytesIO(row["image"]["bytes"]))
        image.load()
        if image.getexif().get(ORIENTATION_TAG) is not None:
            image = ImageOps.exif_transpose(image)
        row["image"] = image
        row["mask"] = np.asarray(Image.open(io.BytesIO(row["mask"]["bytes"])), dtype=bool)
        return row

    def select(self, indices) -> "ReleaseRows":
        """The rows at `indices`, in that order (as `datasets.Dataset.select`)."""
        selected = object.__new__(ReleaseRows)
        selected._rows = [self._rows[i] for i in indices]
        return selected
