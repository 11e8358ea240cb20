"""The Hub model card of a PISA checkpoint: YAML metadata (with a `model-index` only from real evaluation
results) and a body saying what the model is, how to use it, how it was trained and evaluated."""

import os
import re

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from instructpart_dataset.schema import CITATION

METRIC_IDS = {"gIoU": "giou", "cIoU": "ciou", "P@50:95": "precision@50:95", "P@50": "precision@50"}

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}

PISA is LISA (a LLaVA model that answers with a `[SEG]` token whose hidden state, projected, prompts SAM's
mask decoder) with SAM's image encoder replaced by a frozen DINOv2 whose multi-layer features are fused by
linear layers. This implementation is the `instructpart` project's; no official PISA code or weights exist.

| part | this checkpoint |
|---|---|
{{ architecture_rows }}

{% if space_url %}Try it in the demo Space: {{ space_url }}. The Hub shows no inference widget for this model: no
Inference Provider serves custom-code (`trust_remote_code`) checkpoints, so this card carries no `widget:` block.
{% endif %}{% if examples %}
Example (the photo is in this repository; a generated picture, not a dataset photo):

{% for src, text in examples %}![{{ text }}]({{ src }}) *"{{ text }}"*
{% endfor %}{% endif %}
## How to use

```python
from transformers import AutoModel, pipeline
from PIL import Image

segmenter = pipeline(model="{{ repo_id }}", trust_remote_code=True)
result = segmenter(Image.open("kitchen.jpg"), instruction="If I want to open the cabinet, which part should I use?")
result[0]["mask"]  # PIL mask of the part, same size as the image

model = AutoModel.from_pretrained("{{ repo_id }}", trust_remote_code=True)
masks = model.predict([Image.open("kitchen.jpg")], ["handle of the cabinet"])  # bool (H, W) arrays
```

## Training

{{ training }}

## Evaluation

{{ evaluation }}

## Licence

{{ licence }}

## Limitations

The model predicts one mask per instruction and always predicts a part: it has no "nothing to segment"
answer. InstructPart's instructions are English and its objects everyday household ones; other domains and
languages are untested. Scores on InstructPart's 600 test entries move by a point or two between runs.

## Citation

```bibtex
{{ citation }}
```
"""


def load_results(paths: list) -> dict:
    """`{path: results dict}` from the files `pisa_model.evaluate` writes (`results.json`, one or both tasks each);
    a task scored in two of them is refused."""
    from instructpart_metric.results import load_results as load_results_file
    from instructpart_metric.results import validate_results

    loaded, seen = {}, {}
    for path in paths:
        results = validate_results(load_results_file(path), path)
        for task in results["configs"]:
            if task in seen:
                raise ValueError(f"{path}: {task.upper()} results again (already in {seen[task]})")
            seen[task] = path
        loaded[path] = results
    return loaded


def _eval_results(results_by_file: dict, dataset_id: str) -> list:
    """model-index entries; the dataset is named with its revision (the scored rows' fingerprint) and entry count, and
    only the official test split is called plainly "test" (`paper.why_not_ranked`)."""
    from instructpart_dataset.schema import CONFIGS
    from instructpart_metric.paper import why_not_ranked

    entries = []
    for results in results_by_file.values():
        dataset = (results.get("provenance") or {}).get("dataset") or {}
        split = dataset.get("split", "test")
        for task, block in results["configs"].items():
            scored = (dataset.get("configs") or {}).get(task) or {}
            rows = scored.get("rows", block["all"].get("num_samples"))
            count = rows // len(CONFIGS[task]) if isinstance(rows, int) else None
            reason = why_not_ranked(dataset, task)
            name = "InstructPart" if reason is None else f"InstructPart ({reason})"
            label = split if reason is None else f"{split} ({count} entries)"
            data = {
                "task_type": "image-segmentation",
                "task_name": f"Part segmentation ({task.upper()})",
                "dataset_type": dataset_id,
                "dataset_name": name,
                "dataset_config": task,
                "dataset_split": label,
                "dataset_revision": scored.get("fingerprint"),
                "dataset_args": {"entries": count, "rows": rows},
            }
            for metric, metric_id in METRIC_IDS.items():
                entries.append(
                    EvalResult(
                        **data,
                        metric_type=metric_id,
                        metric_name=f"{metric} ({task.upper()})",
                        metric_value=round(100 * block["all"][metric], 2),
                    )
                )
            entries += _paper_column_results(results, task, data, scored.get("fingerprint"))
    return entries


def _paper_column_results(results: dict, task: str, data: dict, fingerprint) -> list:
    """The paper's columns of `task` (`metric_config` = the column group's key, e.g. `trps_human`) with the ORPS
    form and the data's fingerprint in `metric_args` (the model-index groups metrics by task type and dataset, so
    per-metric fields are what survives), in the dataset entry `data` of the task's own numbers: what a leaderboard
    needs to place the model beside the paper's rows (`python -m instructpart_metric leaderboard`)."""
    from instructpart_metric.paper import COLUMN_GROUPS

    paper = results.get("paper") or {}
    columns = paper.get("columns") or {}
    arguments = {"orps_form": paper.get("orps_form"), "fingerprint": fingerprint, "rows": data["dataset_args"]["rows"]}
    entries = []
    for group in COLUMN_GROUPS:
        if group.task != task:
            continue
        for metric, metric_id in METRIC_IDS.items():
            value = columns.get(f"{group.key}_{metric}")
            if value is None:
                continue
            entries.append(
                EvalResult(
                    **data,
                    metric_type=metric_id,
                    metric_name=f"{metric} ({group.title})",
                    metric_config=group.key,
                    metric_args={key: value for key, value in arguments.items() if value is not None},
                    metric_value=round(100 * value, 2),
                )
            )
    return entries


def _evaluation_section(results_by_file: dict, name: str, compare_published: bool) -> str:
    from instructpart_metric.paper import format_paper_markdown
    from instructpart_metric.provenance import format_provenance
    from instructpart_metric.results import config_rows

    if not results_by_file:
        return (
            "Not evaluated yet. Score it with `accelerate launch -m pisa_model.evaluate --model <this repo> "
            "--data-dir <release> --config trps,orps --split test --compare-published`."
        )
    lines = []
    for results in results_by_file.values():
        # Results written before generated answers existed were teacher-forced: it was the only mode.
        answer_mode = (results.get("provenance") or {}).get("answer_mode", "teacher-forced")
        lines += [
            f"Scored by `pisa_model.evaluate` with the answer {answer_mode}; percentages, columns as in the paper. "
            'Teacher-forced: the trained answer "Sure, it is [SEG]." is fed in and the mask read from its `[SEG]`, '
            "as in LISA's validation; generated: the model writes its answer greedily and an answer without `[SEG]` "
            "scores an empty mask (`--adapter-arg generate=true`).",
            "",
            "| task | instruction type | gIoU | cIoU | P@50:95 | P@50 | N |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for task, block in results["configs"].items():
            for row, metrics in config_rows(block, task).items():
                cells = " | ".join(f"{100 * metrics[k]:.2f}" for k in METRIC_IDS)
                lines.append(f"| {task.upper()} | {row} | {cells} | {metrics.get('num_samples', '')} |")
        paper = results["paper"]
        lines += ["", "In the layout of the paper's main table:", ""]
        lines.append(
            format_paper_markdown(
                {name: paper["columns"]},
                paper["orps_form"],
                published=compare_published,
                provenance=results.get("provenance"),
            )
        )
        provenance = format_provenance(results.get("provenance"))
        if provenance:
            lines += ["", "Provenance:", ""] + [f"- `{public_text(line)}`" for line in provenance]
        lines.append("")
    return "\n".join(lines).rstrip()


def _architecture_rows(config) -> str:
    text = config.llava_config.text_config
    dinov2 = config.dinov2_config
    decoder = config.mask_decoder_config
    rows = [
        ("language model", f"{text.model_type}, {text.num_hidden_layers} layers, hidden size {text.hidden_size}"),
        (
            "frozen DINOv2",
            f"{dinov2.num_hidden_layers} layers, hidden size {dinov2.hidden_size}, "
            f"fused layers {list(config.dinov2_feature_layers)} ({config.feature_fusion})",
        ),
        ("SAM mask decoder", f"hidden size {decoder.hidden_size}, {decoder.num_hidden_layers} two-way layers"),
        ("mask input", f"{config.mask_input_size} px square (longest side resized, padded)"),
        ("LoRA rank", str(config.lora_rank) if config.lora_rank else "none (full fine-tuning of the new parts)"),
    ]
    if config.initialization:
        rows.append(("training started from", config.initialization))
    return "\n".join(f"| {name} | {value} |" for name, value in rows)


def _training_section(checkpoint: str, config) -> str:
    """What the checkpoint was trained on, from the record the training run keeps beside its weights."""
    import json

    from .train import TRAINING_DATA_FILE

    losses = (
        f"LISA's losses: language-model cross-entropy x{config.ce_loss_weight}, mask BCE x{config.bce_loss_weight}, "
        f"Dice x{config.dice_loss_weight}; DINOv2 and LLaVA's vision tower stay frozen."
    )
    try:
        with open(os.path.join(checkpoint, TRAINING_DATA_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return f"Trained with `accelerate launch -m pisa_model.train` ({losses}) The training data was not recorded."
    configs = " and ".join(str(c).upper() for c in record.get("configs", []))
    rows = f"{record.get('rows', '?'):,}" if isinstance(record.get("rows"), int) else "?"
    if record.get("synthetic"):
        data = f"synthetic data, not InstructPart ({_plain(record['synthetic'])}): {rows} {configs} rows"
    else:
        data = f"the `{_plain(record.get('split'))}` split of `{_plain(record.get('data'))}`: {rows} {configs} rows"
    return f"Trained with `accelerate launch -m pisa_model.train` on {data} ({losses})"


_LOCAL_PATH = re.compile(r"(?<![\w:/.])(?:~|\.{1,2})?/[^\s,;'\"`=]*|\b[A-Za-z]:\\[^\s,;'\"`=]*")


def public_text(text) -> str:
    """Recorded text as a public card shows it: one line inside Markdown inline code (no backticks, no line breaks),
    local paths cut to their last component (`/home/me/data/InstructPart` -> `…/InstructPart`)."""

    def last_part(found):
        parts = [p for p in re.split(r"[\\/]", found.group(0)) if p]
        return "…/" + parts[-1] if parts else "…/"

    return _LOCAL_PATH.sub(last_part, _plain(text))


def _plain(value) -> str:
    """Text from a record, safe inside Markdown inline code and YAML-free body text."""
    return str(value).replace("`", "'").replace("\n", " ").replace("\r", " ")


def _licence_text(license: str | None) -> str:
    if license:
        return (
            f"`{_plain(license)}`, as chosen by the uploader. The parts the checkpoint was built from keep their "
            "own licences, and the InstructPart data states none."
        )
    return (
        "Not stated: no licence was chosen when this checkpoint was published (`upload.py model` without "
        "`--license`), so the card says `unknown`. Ask the author before reusing it; the parts it was built from "
        "keep their own licences."
    )


def render_model_card(
    checkpoint: str,
    repo_id: str,
    *,
    results_files: list | None = None,
    dataset_id: str = "instructpart",
    base_models: list | None = None,
    license: str | None = None,
    space_url: str | None = None,
    training: str | None = None,
    examples: list | None = None,
    compare_published: bool = False,
) -> ModelCard:
    """The card of the checkpoint folder `checkpoint` published as `repo_id`.

    `dataset_id` is the Hub dataset the results refer to; `base_models` the parts it was built from (Hub ids, as
    given to `from_components`); `examples` are `(file name in the repo, instruction)` pairs shown in the card's body
    (the Hub runs no widget for custom-code models, so there is no `widget:` block); `license` is the uploader's choice
    (None: `unknown`, and the card says no licence was chosen); the training data comes from the checkpoint's
    `training_data.json` (written by `pisa_model.train`).
    `results_files` are results.json files of `pisa_model.evaluate`; `compare_published` puts the paper's published
    methods beside them, with ranks, in the evaluation section.
    """
    from .configuration_pisa import PisaConfig

    config = PisaConfig.from_pretrained(checkpoint)
    results_by_file = load_results(results_files or [])
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license or "unknown",
        datasets=[dataset_id],
        base_model=list(base_models) if base_models else None,
        tags=["pisa", "instructpart", "part-segmentation", "reasoning-segmentation", "custom_code"],
        model_name=repo_id.split("/")[-1],
        eval_results=_eval_results(results_by_file, dataset_id) or None,
    )
    summary = (
        f"`{repo_id}` is a PISA checkpoint for [InstructPart](https://zifuwan.github.io/InstructPart/) "
        "task-oriented part segmentation: given a photo and an instruction, it returns the mask of the object "
        "part that serves the task."
    )
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        summary=summary,
        architecture_rows=_architecture_rows(config),
        space_url=space_url,
        training=training or _training_section(checkpoint, config),
        examples=[
            (f"https://huggingface.co/{repo_id}/resolve/main/{name}", _plain(text).replace('"', "'"))
            for name, text in (examples or [])
        ],
        licence=_licence_text(license),
        evaluation=_evaluation_section(results_by_file, repo_id.split("/")[-1], compare_published),
        citation=CITATION,
    )


def write_model_card(folder: str, *args, **kwargs) -> str:
    path = os.path.join(folder, "README.md")
    render_model_card(*args, **kwargs).save(path)
    return path
