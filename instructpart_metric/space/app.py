"""The InstructPart metric Space: gIoU, cIoU, P@50:95 and P@50 of one uploaded mask pair, or of a zip of a model's
predicted masks against a config/split of the published dataset, computed by the evaluate module beside this file.

evaluate's stock widget would ask for the module's features, which are counts: this app takes masks instead.
It needs gradio, evaluate, datasets, numpy and pillow only (not the instructpart packages).

    python app.py [--metric SCRIPT.py] [--dataset ORG/instructpart] [--port N]

The metric is `--metric`, else the one script beside this file (or in its parent folder, the package's layout)
that defines an `evaluate.Metric`. The dataset offered by default is `--dataset`, else the first `datasets:` entry
of the card (README.md) beside this file; the card's body is shown as the documentation.
"""

import argparse
import io
import os
import re
import zipfile

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
METRICS = ("gIoU", "cIoU", "P@50:95", "P@50")
CONFIGS = ("trps", "orps")
SPLITS = ("test", "train")
# Agreement picture: both masks, prediction only, truth only.
BOTH, PREDICTION_ONLY, TRUTH_ONLY = (40, 170, 60), (220, 50, 50), (50, 90, 220)
TITLE = "InstructPart metric"


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


def _as_mask(image: Image.Image) -> Image.Image:
    """A single-channel view of an uploaded mask (browsers and editors often save masks as RGB/RGBA)."""
    return image if image.mode in ("1", "L", "P", "I", "I;16") else image.convert("L")


def score_pair(metric, prediction, truth):
    """(the four metrics in percent with I, U and IoU, the agreement picture) of one mask pair."""
    if prediction is None or truth is None:
        raise gr.Error("Upload a predicted mask and its ground-truth mask (non-zero pixels = the part).")
    if prediction.size != truth.size:
        raise gr.Error(
            f"The masks differ in size: prediction {prediction.size[0]}x{prediction.size[1]}, "
            f"truth {truth.size[0]}x{truth.size[1]}; masks are compared at the truth's size, never resized."
        )
    predicted = np.asarray(_as_mask(prediction)) != 0
    true = np.asarray(_as_mask(truth)) != 0
    result = metric.compute(predictions=[predicted], references=[true])
    intersection, union = int((predicted & true).sum()), int((predicted | true).sum())
    iou = intersection / union if union else 1.0
    return {**percent(result), "intersection": intersection, "union": union, "IoU": round(iou, 6)}, agreement(
        predicted, true
    )


def read_predictions(zip_path: str) -> dict:
    """{(instruction_type, id): (entry name, PNG bytes)} from a zip laid out like the score CLI's folder,
    `<instruction_type>/<id>.png`, at any depth."""
    predictions = {}
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) < 2 or not parts[-1].lower().endswith(".png") or parts[-1].startswith("."):
                continue
            key = (parts[-2], parts[-1][: -len(".png")])
            if key in predictions:
                raise gr.Error(f"{name}: a second prediction for {key[0]}/{key[1]}.png in the zip")
            predictions[key] = (name, archive.read(name))
    if not predictions:
        raise gr.Error("The zip holds no <instruction_type>/<id>.png masks.")
    return predictions


def load_truths(dataset: str, config: str, split: str):
    try:
        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as error:  # offline, unknown repo, private repo, unknown config or split: say which
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise gr.Error(
            f"Cannot load {dataset!r} ({config}/{split}) with datasets.load_dataset: {reason}. Scoring a zip needs "
            "the Hub (or a local export of the dataset) to be reachable."
        ) from None
    return rows.select_columns(["id", "instruction_type", "mask"]).with_format("numpy")


def score_zip(metric_script, zip_file, dataset, config, split, missing_as_empty=False):
    """(overall metrics in percent, per-instruction-type table) of a zip of predictions against the dataset.

    Pairs are streamed into a module loaded for this request (a bad file met half-way must not leave samples in
    a shared module's stream)."""
    if zip_file is None:
        raise gr.Error("Upload a zip of <instruction_type>/<id>.png prediction masks.")
    predictions = read_predictions(zip_file)
    truths = load_truths(dataset.strip(), config, split)
    metric = evaluate.load(metric_script)
    missing = 0
    for row in truths:
        key = (row["instruction_type"], row["id"])
        truth = row["mask"]
        if key not in predictions:
            if not missing_as_empty:
                raise gr.Error(
                    f"missing prediction {key[0]}/{key[1]}.png (and maybe others); tick 'missing as empty' to "
                    "score missing masks as empty"
                )
            missing += 1
            prediction = np.zeros_like(truth)
        else:
            name, data = predictions.pop(key)
            try:
                image = Image.open(io.BytesIO(data))
                image.load()
            except Exception as error:
                raise gr.Error(f"{name}: unreadable PNG ({type(error).__name__})") from None
            if image.size[::-1] != truth.shape:
                raise gr.Error(
                    f"{name}: {image.size[0]}x{image.size[1]}, but the ground truth of {key[1]} is "
                    f"{truth.shape[1]}x{truth.shape[0]}; masks are never resized"
                )
            prediction = image
        try:
            metric.add(prediction=prediction, reference=truth, group=key[0])
        except ValueError as error:
            raise gr.Error(f"{key[0]}/{key[1]}.png: {error}") from None
    result = metric.compute()
    overall = {**percent(result), "num_samples": result["num_samples"], "missing_as_empty": missing}
    if predictions:
        overall["ignored_files"] = len(predictions)  # predictions for rows outside this config/split
    table = [[group, *percent(values).values(), values["num_samples"]] for group, values in result["groups"].items()]
    return overall, table


def card_body(card: str | None) -> str:
    if card is None:
        return ""
    return RepoCard.load(card).text


def build_demo(metric_script: str, default_dataset: str, documentation: str) -> gr.Blocks:
    metric = evaluate.load(metric_script)  # for pairs: one compute() call each, which adds nothing on a bad input
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"# {TITLE}\n"
            "gIoU, cIoU, P@50:95 and P@50 of binary part masks, as the InstructPart benchmark (ACL 2025) reports them "
            "(percent here; the module returns fractions). Non-zero pixels are the part; masks are never resized. "
            "Score a whole model in Python with `evaluate.load(...).compute(predictions=masks, references=truths)`."
        )
        with gr.Tab("One mask pair"):
            with gr.Row():
                prediction = gr.Image(type="pil", label="predicted mask")
                truth = gr.Image(type="pil", label="ground-truth mask")
            pair_button = gr.Button("Score the pair", variant="primary")
            with gr.Row():
                pair_metrics = gr.JSON(label="metrics (percent), I, U and IoU")
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
                concurrency_id="metric",  # one scoring at a time: evaluate modules share a cache file per script
            )
        with gr.Tab("A model's predictions"):
            gr.Markdown(
                "A zip of `<instruction_type>/<id>.png` masks (the layout `pisa_model.evaluate --save-predictions` "
                "writes), scored against a config and split of the dataset on the Hub."
            )
            with gr.Row():
                zip_file = gr.File(file_types=[".zip"], type="filepath", label="predictions (.zip)")
                with gr.Column():
                    dataset = gr.Textbox(value=default_dataset, label="dataset (Hub id or local export)")
                    config = gr.Dropdown(list(CONFIGS), value="trps", label="config")
                    split = gr.Dropdown(list(SPLITS), value="test", label="split")
                    missing_as_empty = gr.Checkbox(False, label="missing as empty")
            zip_button = gr.Button("Score the predictions", variant="primary")
            overall = gr.JSON(label="overall (percent)")
            table = gr.Dataframe(headers=["instruction type", *METRICS, "samples"], label="per instruction type")
            zip_button.click(
                lambda *args: score_zip(metric_script, *args),
                inputs=[zip_file, dataset, config, split, missing_as_empty],
                outputs=[overall, table],
                api_name="score_zip",
                concurrency_id="metric",
            )
        if documentation:
            with gr.Accordion("How the metrics are defined (the module card)", open=False):
                gr.Markdown(documentation)
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metric", help="the evaluate module script (default: found beside this file)")
    parser.add_argument("--dataset", help="the dataset offered for zips (default: the card's `datasets:`)")
    parser.add_argument("--port", type=int, help="default: $GRADIO_SERVER_PORT or 7860")
    args = parser.parse_args(argv)
    card = find_card()
    listed = (RepoCard.load(card).data.to_dict().get("datasets") or [""]) if card else [""]
    build_demo(args.metric or find_metric_script(), args.dataset or listed[0], card_body(card)).launch(
        server_port=args.port
    )


if __name__ == "__main__":
    main()
