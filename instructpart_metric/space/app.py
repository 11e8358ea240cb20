"""The InstructPart metric Space: gIoU, cIoU, P@50:95 and P@50 of one uploaded mask pair, or of a zip of a model's
predicted masks against a config/split of a dataset the Space offers, computed by the evaluate module beside this
file.

evaluate's stock widget would ask for the module's features, which are counts: this app takes masks instead.
It needs gradio, evaluate, datasets, numpy and pillow only (not the instructpart packages): masks are read by
`read_mask_png` of the `core.py` staged beside it, the rule the score CLI follows.

    python app.py [--metric SCRIPT.py] [--dataset ORG/instructpart ...] [--allow-local-datasets] [--port N]

The metric is `--metric`, else the one script beside this file (or in its parent folder, the package's layout)
that defines an `evaluate.Metric`. The datasets offered for zips are the card's `datasets:` entries (README.md
beside this file, whose body is shown as the documentation) and every `--dataset`; nothing else can be scored.
A local folder is offered only with `--allow-local-datasets` (for use on your own machine).

Every request is bounded (the constants below; the card's "Using the Space" section states them): uploads of at
most MAX_UPLOAD; a mask pair of at most MAX_MASK_PIXELS pixels; a zip of at most MAX_ZIP_ENTRIES entries, of which
only those named like a row of the chosen config/split are read, each only after its declared size (at most a
PNG of its ground truth's size can need) and compression ratio are checked, and decoded only after its PNG
header's width x height matches the ground truth's; scoring a zip stops after ZIP_TIME_LIMIT_S seconds. The
ground truths of a config/split are loaded once and cached. Pairs and zips have separate queues.
"""

import argparse
import html
import io
import os
import re
import struct
import sys
import threading
import time
import zipfile
import zlib

try:
    import datasets
    import evaluate
    import gradio as gr
except ImportError as missing:  # locally; on the Space, requirements.txt installs them
    raise ImportError(
        f"this Space app needs datasets, evaluate, gradio ({missing}): pip install instructpart[space]"
    ) from None
import numpy as np
from huggingface_hub import RepoCard
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__:  # python -m instructpart_metric.space: the package's core
    from ..core import read_mask_png
else:  # the Space: core.py is staged beside app.py (on sys.path for `python app.py`, not for runpy)
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    from core import read_mask_png
METRICS = ("gIoU", "cIoU", "P@50:95", "P@50")
CONFIGS = ("trps", "orps")
SPLITS = ("test", "train")
# Agreement picture: both masks, prediction only, truth only.
BOTH, PREDICTION_ONLY, TRUTH_ONLY = (40, 170, 60), (220, 50, 50), (50, 90, 220)
TITLE = "InstructPart metric"
ZIP_LAYOUT = "<instruction_type>/<id>.png"

# --- the bounds of one request ---
MAX_UPLOAD = "256mb"  # any uploaded file (gradio streams it to disk)
MAX_MASK_PIXELS = 4096 * 4096  # a pair's ground truth; its prediction must have the same size
MAX_ZIP_ENTRIES = 20_000  # the test splits have 1,200 (TRPS) and 2,400 (ORPS) rows
MAX_CENTRAL_DIRECTORY = MAX_ZIP_ENTRIES * 512  # bytes of the zip's directory, checked before it is parsed
MAX_COMPRESSION_RATIO = 200  # a PNG is compressed already: a zip entry shrinking further is not a mask
ZIP_TIME_LIMIT_S = 600
QUEUE_SIZE = 32  # waiting requests per queue
# Memory of one zip request beyond the cached ground truths: the zip's directory (at most
# MAX_CENTRAL_DIRECTORY bytes, parsed) and, one at a time, an entry's bytes (entry_size_limit) and the decoded
# prediction and truth: about ZIP_BASE_BYTES + ZIP_BYTES_PER_PIXEL x the largest ground truth's pixels.
ZIP_BASE_BYTES = 36 * 2**20
ZIP_BYTES_PER_PIXEL = 12


def entry_size_limit(shape: tuple) -> int:
    """The most bytes a zip entry may declare for a ground truth of `shape` (H, W): an uncompressed 16-bit
    grey PNG of that size (two bytes a pixel and a filter byte a row), twice over, plus room for chunks."""
    height, width = shape
    return 2 * height * (2 * width + 1) + 2**16


def zip_memory_bound(largest_truth_pixels: int) -> int:
    return ZIP_BASE_BYTES + ZIP_BYTES_PER_PIXEL * largest_truth_pixels


class Refused(gr.Error):
    """An expected refusal: its one-line reason shown to the user as text (gradio renders messages as HTML,
    which would drop `<instruction_type>/<id>.png`)."""

    def __init__(self, message: str):
        super().__init__(html.escape(message, quote=False), print_exception=False)


def _search_folders() -> list:
    return [HERE, os.path.dirname(HERE)]


def find_metric_script() -> str:
    """The evaluate module script beside this app (on the Space) or in its parent folder (in the package)."""
    for folder in _search_folders():
        scripts = []
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.endswith(".py") and name != "app.py" and os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    if re.search(r"^class \w+\(evaluate\.Metric\):", f.read(), re.MULTILINE):
                        scripts.append(path)
        if len(scripts) == 1:
            return scripts[0]
    raise FileNotFoundError(f"no single evaluate.Metric script beside {HERE} or in its parent; pass --metric")


def find_card() -> str | None:
    for folder in _search_folders():
        if os.path.isfile(os.path.join(folder, "README.md")):
            return os.path.join(folder, "README.md")
    return None


def percent(result: dict) -> dict:
    return {key: round(100 * result[key], 2) for key in METRICS}


def agreement(prediction: np.ndarray, truth: np.ndarray) -> Image.Image:
    picture = np.full((*truth.shape, 3), 235, dtype=np.uint8)
    picture[prediction & truth] = BOTH
    picture[prediction & ~truth] = PREDICTION_ONLY
    picture[~prediction & truth] = TRUTH_ONLY
    return Image.fromarray(picture)


# --- one mask pair -------------------------------------------------------------------------------------------


def read_upload(path: str, **limits) -> np.ndarray:
    """The pixel values of an uploaded mask file, by the package's rule (`core.read_mask_png`)."""
    try:
        return read_mask_png(path, os.path.basename(path), **limits)
    except ValueError as error:
        raise Refused(str(error)) from None


def preview(path):
    """What an uploaded mask holds, for the eye: its non-zero pixels white (0/1 masks would look black)."""
    if path is None:
        return None
    return Image.fromarray(np.where(read_upload(path, max_pixels=MAX_MASK_PIXELS) != 0, 255, 0).astype(np.uint8))


def score_pair(metric, prediction, truth):
    """(the four metrics, I, U and the pair's IoU, all scores in percent; the agreement picture) of two uploaded
    mask files, read as the score CLI reads them: non-zero pixels are the part."""
    if prediction is None or truth is None:
        raise Refused("Upload a predicted mask and its ground-truth mask (PNG; non-zero pixels = the part).")
    true = read_upload(truth, max_pixels=MAX_MASK_PIXELS) != 0
    predicted = read_upload(prediction, shape=true.shape) != 0
    result = metric.compute(predictions=[predicted], references=[true])
    intersection, union = int((predicted & true).sum()), int((predicted | true).sum())
    iou = intersection / union if union else 1.0
    scores = {**percent(result), "intersection": intersection, "union": union, "IoU": round(100 * iou, 2)}
    return scores, agreement(predicted, true)


# --- the ground truths of the offered datasets ---------------------------------------------------------------


class Truths:
    """The rows of one config/split: their keys `(instruction_type, id)` in data order, each truth's (H, W)
    from its PNG header, and the masks left encoded in the (memory-mapped) dataset until a row is scored."""

    def __init__(self, rows):
        self.rows = rows
        self.keys, self.shapes = [], []
        for instruction_type, sample, mask in zip(rows["instruction_type"], rows["id"], rows["mask"]):
            self.keys.append((instruction_type, sample))
            source = _encoded(mask)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:  # header only
                self.shapes.append(image.size[::-1])
        self.index = {key: position for position, key in enumerate(self.keys)}
        self.largest_pixels = max((h * w for h, w in self.shapes), default=0)

    def mask(self, position: int) -> np.ndarray:
        sample = self.keys[position][1]
        return read_mask_png(_encoded(self.rows[position]["mask"]), f"ground-truth mask of {sample}") != 0


def _encoded(mask: dict):
    """An undecoded `datasets.Image` value: its PNG bytes, else its file."""
    return mask["path"] if mask.get("bytes") is None else mask["bytes"]


class TruthCache:
    """Ground truths loaded on first use, once per (dataset, config, split), of the offered datasets only."""

    def __init__(self, offered: list):
        self.offered = list(offered)
        self._loaded, self._lock = {}, threading.Lock()

    def get(self, dataset: str, config: str, split: str) -> Truths:
        if dataset not in self.offered or config not in CONFIGS or split not in SPLITS:
            offered = ", ".join(self.offered) or "none"
            raise Refused(f"{dataset!r} ({config}/{split}) is not offered here; this Space scores: {offered}")
        key = (dataset, config, split)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = Truths(load_rows(dataset, config, split))
            return self._loaded[key]


def load_rows(dataset: str, config: str, split: str):
    try:
        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as error:  # offline, unknown repo, private repo, unknown config or split: say which
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise Refused(
            f"Cannot load {dataset!r} ({config}/{split}) with datasets.load_dataset: {reason}. Scoring a zip needs "
            "the Hub (or a local export of the dataset) to be reachable."
        ) from None
    rows = rows.with_format(None).select_columns(["id", "instruction_type", "mask"])
    return rows.cast_column("mask", datasets.Image(decode=False))


# --- a zip of predictions ------------------------------------------------------------------------------------


def _declared_directory(path: str, name: str) -> tuple:
    """(entries, directory bytes) as the zip's end record declares them, read before zipfile builds an object
    for every entry of the directory, however many."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - (22 + 0xFFFF)))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise Refused(f"{name}: not a zip archive (no end-of-directory record; truncated?)")
    # disk, directory's disk, entries on this disk, entries, directory bytes, directory offset, comment length
    fields = struct.unpack("<4H2LH", tail[at + 4 : at + 22])
    return fields[3], fields[4]  # 0xFFFF / 0xFFFFFFFF mean zip64: beyond both caps


def prediction_key(entry: str):
    """(instruction_type, id) of a zip entry laid out as `<instruction_type>/<id>.png` at any depth, else None."""
    parts = entry.split("/")
    if len(parts) < 2 or not parts[-1].lower().endswith(".png") or parts[-1].startswith("."):
        return None
    return parts[-2], parts[-1][: -len(".png")]


def open_predictions(zip_path: str, name: str, truths: Truths):
    """(the open archive, {row key: ZipInfo} of the entries that predict rows of `truths`, number of other
    .png entries), every wanted entry's declared size and compression ratio checked; nothing is decompressed."""
    entries, directory_bytes = _declared_directory(zip_path, name)
    if entries > MAX_ZIP_ENTRIES or directory_bytes > MAX_CENTRAL_DIRECTORY:
        raise Refused(
            f"{name}: {entries:,} entries in a {directory_bytes:,}-byte directory; "
            f"this Space reads zips of at most {MAX_ZIP_ENTRIES:,} entries"
        )
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise Refused(f"{name}: not a readable zip archive ({error})") from None
    try:
        if len(archive.infolist()) > MAX_ZIP_ENTRIES:
            raise Refused(f"{name}: more than {MAX_ZIP_ENTRIES:,} entries")
        wanted, ignored = {}, 0
        for info in archive.infolist():
            key = prediction_key(info.filename)
            if key is None:
                continue
            if key not in truths.index:
                ignored += 1  # a prediction for a row outside this config/split: never read
                continue
            if key in wanted:
                raise Refused(f"{info.filename}: a second prediction for {key[0]}/{key[1]}.png in the zip")
            _check_declared(info, truths.shapes[truths.index[key]])
            wanted[key] = info
    except BaseException:
        archive.close()
        raise
    return archive, wanted, ignored


def _check_declared(info: zipfile.ZipInfo, shape: tuple) -> None:
    limit = entry_size_limit(shape)
    if info.file_size > limit:
        raise Refused(
            f"{info.filename}: {info.file_size:,} bytes uncompressed, more than a PNG mask of its ground truth's "
            f"{shape[1]}x{shape[0]} pixels can need ({limit:,}); not read"
        )
    if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise Refused(
            f"{info.filename}: compressed {info.file_size / max(info.compress_size, 1):,.0f}:1 in the zip (a PNG "
            f"does not shrink more than {MAX_COMPRESSION_RATIO}:1); not read"
        )


def read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The entry's bytes, at most its (checked) declared size: zipfile decompresses no more than is asked for,
    and a stream longer than declared fails its CRC."""
    try:
        with archive.open(info) as stream:
            data = stream.read(info.file_size)
            stream.read(1)  # at the declared end: checks the CRC
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError, zlib.error) as error:
        raise Refused(f"{info.filename}: unreadable zip entry ({type(error).__name__}: {error})") from None
    return data


def score_zip(metric_script, truth_cache: TruthCache, zip_file, dataset, config, split, missing_as_empty=False):
    """(overall metrics in percent, per-instruction-type table) of a zip of predictions against the dataset.

    Pairs are streamed into a module loaded in memory for this request (a bad file met half-way must not leave
    samples in a shared module's stream)."""
    if zip_file is None:
        raise Refused(f"Upload a zip of {ZIP_LAYOUT} prediction masks.")
    truths = truth_cache.get(dataset, config, split)
    name = os.path.basename(zip_file)
    deadline = time.monotonic() + ZIP_TIME_LIMIT_S
    archive, wanted, ignored = open_predictions(zip_file, name, truths)
    with archive:
        if not wanted and not ignored:
            raise Refused(f"{name} holds no {ZIP_LAYOUT} masks.")
        missing = [key for key in truths.keys if key not in wanted]
        if missing and not missing_as_empty:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise Refused(
                f"{name}: missing prediction {missing[0][0]}/{missing[0][1]}.png{more}; tick 'missing as empty' to "
                "score missing masks as empty"
            )
        metric = evaluate.load(metric_script, keep_in_memory=True)
        for position, key in enumerate(truths.keys):
            if time.monotonic() > deadline:
                raise Refused(f"{name}: scoring stopped after {ZIP_TIME_LIMIT_S} s, the limit of one request")
            truth = truths.mask(position)
            info = wanted.get(key)
            if info is None:
                prediction = np.zeros_like(truth)
            else:
                data = read_entry(archive, info)
                try:
                    prediction = read_mask_png(data, info.filename, shape=truth.shape)
                except ValueError as error:
                    raise Refused(str(error)) from None
            metric.add(prediction=prediction, reference=truth, group=key[0])
    result = metric.compute()
    overall = {**percent(result), "num_samples": result["num_samples"], "missing_as_empty": len(missing)}
    if ignored:
        overall["ignored_files"] = ignored  # predictions for rows outside this config/split
    table = [[group, *percent(values).values(), values["num_samples"]] for group, values in result["groups"].items()]
    return overall, table


# --- the app -------------------------------------------------------------------------------------------------


def card_body(card: str | None) -> str:
    if card is None:
        return ""
    return RepoCard.load(card).text


def build_demo(metric_script: str, offered: list, documentation: str) -> gr.Blocks:
    # For pairs: one compute() call each, which adds nothing on a bad input; in memory, so that pairs and zips
    # (each zip loads its own module) never share a cache file and can run side by side.
    metric = evaluate.load(metric_script, keep_in_memory=True)
    truth_cache = TruthCache(offered)
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"# {TITLE}\n"
            "gIoU, cIoU, P@50:95 and P@50 of binary part masks, as the InstructPart benchmark (ACL 2025) reports them "
            "(percent here; the module returns fractions). Masks are single-channel PNGs whose non-zero pixels are "
            "the part, read as `instructpart_metric score` reads them; they are never resized. Score a whole model "
            "in Python with `evaluate.load(...).compute(predictions=masks, references=truths)`."
        )
        with gr.Tab("One mask pair"):
            with gr.Row():
                prediction = gr.File(file_types=[".png"], type="filepath", label="predicted mask (PNG)")
                truth = gr.File(file_types=[".png"], type="filepath", label="ground-truth mask (PNG)")
            with gr.Row():
                prediction_shown = gr.Image(
                    type="pil", format="png", interactive=False, label="predicted mask (non-zero shown white)"
                )
                truth_shown = gr.Image(
                    type="pil", format="png", interactive=False, label="ground-truth mask (non-zero shown white)"
                )
            for upload, shown in ((prediction, prediction_shown), (truth, truth_shown)):
                upload.change(preview, inputs=upload, outputs=shown, api_name=False, concurrency_id="pair")
            pair_button = gr.Button("Score the pair", variant="primary")
            with gr.Row():
                pair_metrics = gr.JSON(label="metrics, I, U and IoU (scores in percent)")
                picture = gr.Image(
                    type="pil",
                    format="png",
                    interactive=False,
                    label="green: both, red: prediction only, blue: truth only",
                )
            pair_button.click(
                lambda p, t: score_pair(metric, p, t),
                inputs=[prediction, truth],
                outputs=[pair_metrics, picture],
                api_name="score_pair",
                concurrency_id="pair",  # never behind a zip
            )
        with gr.Tab("A model's predictions"):
            gr.Markdown(
                f"A zip of `{ZIP_LAYOUT}` masks (the layout `pisa_model.evaluate --save-predictions` writes), "
                "scored against a config and split of a dataset this Space offers."
            )
            with gr.Row():
                zip_file = gr.File(file_types=[".zip"], type="filepath", label="predictions (.zip)")
                with gr.Column():
                    dataset = gr.Dropdown(offered, value=offered[0] if offered else None, label="dataset")
                    config = gr.Dropdown(list(CONFIGS), value="trps", label="config")
                    split = gr.Dropdown(list(SPLITS), value="test", label="split")
                    missing_as_empty = gr.Checkbox(False, label="missing as empty")
            zip_button = gr.Button("Score the predictions", variant="primary")
            overall = gr.JSON(label="overall (percent)")
            table = gr.Dataframe(headers=["instruction type", *METRICS, "samples"], label="per instruction type")
            zip_button.click(
                lambda *args: score_zip(metric_script, truth_cache, *args),
                inputs=[zip_file, dataset, config, split, missing_as_empty],
                outputs=[overall, table],
                api_name="score_zip",
                concurrency_id="zip",
            )
        if documentation:
            with gr.Accordion("How the metrics are defined, and what one request may use (the card)", open=False):
                gr.Markdown(documentation)
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo


def is_local(dataset: str) -> bool:
    """Whether a --dataset value names a local folder rather than a Hub id (`name` or `org/name`)."""
    return os.path.exists(dataset) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", dataset)


def offered_datasets(card_datasets: list, launch_datasets: list, allow_local: bool, error) -> list:
    """The datasets a zip can be scored against: the card's, then --dataset's, each once."""
    offered = []
    for dataset in [*card_datasets, *launch_datasets]:
        if dataset in launch_datasets and is_local(dataset):
            if not allow_local:
                error(f"{dataset}: a local path; pass --allow-local-datasets to offer it (for use on your own machine)")
            if not os.path.isdir(dataset):
                error(f"{dataset}: no such folder")
        if dataset not in offered:
            offered.append(dataset)
    return offered


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metric", help="the evaluate module script (default: found beside this file)")
    parser.add_argument(
        "--dataset", action="append", default=[], help="a dataset offered for zips, besides the card's `datasets:`"
    )
    parser.add_argument(
        "--allow-local-datasets", action="store_true", help="let --dataset name local folders (not on a public Space)"
    )
    parser.add_argument("--port", type=int, help="default: $GRADIO_SERVER_PORT or 7860")
    args = parser.parse_args(argv)
    card = find_card()
    listed = (RepoCard.load(card).data.to_dict().get("datasets") or []) if card else []
    offered = offered_datasets(listed, args.dataset, args.allow_local_datasets, parser.error)
    demo = build_demo(args.metric or find_metric_script(), offered, card_body(card))
    demo.launch(server_port=args.port, max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()
