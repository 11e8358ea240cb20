"""The Hub model card of a PISA checkpoint: YAML metadata (with a `model-index` only from real evaluation
results) and a body saying what the model is, how to use it, how it was trained and evaluated."""

import json
import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData

METRIC_IDS = {"gIoU": "giou", "cIoU": "ciou", "P@50:95": "precision@50:95", "P@50": "precision@50"}
TASKS = {
    "trps": ("human", "gpt4"),
    "orps": ("part_question", "part_affordance_question", "part_name", "part_affordance_name"),
}

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

{% if space_url %}Try it in the demo Space: {{ space_url }} (custom-code models get no serverless widget on the Hub).
{% endif %}
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

## Limitations

The model predicts one mask per instruction and always predicts a part: it has no "nothing to segment"
answer. It was trained on English instructions about everyday household objects; other domains and
languages are untested. Scores on InstructPart's 600 test entries move by a point or two between runs.

## Citation

```bibtex
{{ citation }}
```
"""


def _infer_task(results: dict, path: str) -> str:
    """The task of a results file: what its run recorded, else what its instruction types say."""
    recorded = results.get("run", {}).get("config")
    if recorded in TASKS:
        return recorded
    types = set(results.get("by", {}).get("instruction_type", {}))
    for task, names in TASKS.items():
        if types and types <= set(names):
            return task
    raise ValueError(f"{path}: cannot tell TRPS from ORPS (instruction types {sorted(types) or 'missing'})")


def load_results(paths: list) -> dict:
    """`{task: results dict}` from the JSON files the evaluate command writes (`results.json`)."""
    loaded = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                results = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: results file not found") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: malformed JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(results, dict) or "overall" not in results:
            raise ValueError(f"{path}: not a results file of the evaluate command (no 'overall')")
        task = _infer_task(results, path)
        if task in loaded:
            raise ValueError(f"{path}: a second {task.upper()} results file")
        loaded[task] = results
    return loaded


def _eval_results(results_by_task: dict, dataset_id: str, split: str) -> list:
    entries = []
    for task, results in results_by_task.items():
        split_name = results.get("run", {}).get("split", split)
        for metric, metric_id in METRIC_IDS.items():
            entries.append(
                EvalResult(
                    task_type="image-segmentation",
                    task_name=f"Part segmentation ({task.upper()})",
                    dataset_type=dataset_id,
                    dataset_name="InstructPart",
                    dataset_config=task,
                    dataset_split=split_name,
                    metric_type=metric_id,
                    metric_name=f"{metric} ({task.upper()})",
                    metric_value=round(100 * results["overall"][metric], 2),
                )
            )
    return entries


def _evaluation_section(results_by_task: dict) -> str:
    if not results_by_task:
        return (
            "Not evaluated yet. Score it with `accelerate launch -m pisa_model.evaluate --model <this repo> "
            "--data-dir <release> --config trps --split test` (and `--config orps`)."
        )
    # Results written before generated answers existed were teacher-forced: it was the only mode.
    runs = [
        f"`{task}`/`{r.get('run', {}).get('split', 'test')}` of `{r.get('run', {}).get('data_dir', '?')}` "
        f"({r['overall']['num_samples']} rows, answer {r.get('run', {}).get('answer_mode', 'teacher-forced')})"
        for task, r in results_by_task.items()
    ]
    lines = [
        "Scored by `pisa_model.evaluate` on " + ", ".join(runs) + "; percentages, columns as in the paper. "
        'Answer teacher-forced: the trained answer "Sure, it is [SEG]." is fed in and the mask read from its '
        "`[SEG]`, as in LISA's validation; generated: the model writes its answer greedily and an answer without "
        "`[SEG]` scores an empty mask (`--adapter-arg generate=true`).",
        "",
        "| task | instruction type | gIoU | cIoU | P@50:95 | P@50 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for task, results in results_by_task.items():
        for name, metrics in results.get("by", {}).get("instruction_type", {}).items():
            cells = " | ".join(f"{100 * metrics[k]:.2f}" for k in METRIC_IDS)
            lines.append(f"| {task.upper()} | {name} | {cells} |")
        cells = " | ".join(f"**{100 * results['overall'][k]:.2f}**" for k in METRIC_IDS)
        lines.append(f"| {task.upper()} | all | {cells} |")
    return "\n".join(lines)


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
    return "\n".join(f"| {name} | {value} |" for name, value in rows)


def render_model_card(
    checkpoint: str,
    repo_id: str,
    *,
    results_files: list | None = None,
    dataset_id: str = "instructpart",
    base_models: list | None = None,
    license: str = "apache-2.0",
    space_url: str | None = None,
    training: str | None = None,
    widget_examples: list | None = None,
) -> ModelCard:
    """The card of the checkpoint folder `checkpoint` published as `repo_id`.

    `dataset_id` is the Hub dataset the results refer to; `base_models` the parts it was built from (Hub ids, as
    given to `from_components`); `widget_examples` are `(file name in the repo, instruction)` pairs shown as the card's examples.
    """
    from instructpart_dataset.schema import CITATION

    from .configuration_pisa import PisaConfig

    config = PisaConfig.from_pretrained(checkpoint)
    results_by_task = load_results(results_files or [])
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license,
        datasets=[dataset_id],
        base_model=list(base_models) if base_models else None,
        tags=["pisa", "instructpart", "part-segmentation", "reasoning-segmentation", "custom_code"],
        widget=[
            {"src": f"https://huggingface.co/{repo_id}/resolve/main/{name}", "text": text}
            for name, text in (widget_examples or [])
        ]
        or None,
        model_name=repo_id.split("/")[-1],
        eval_results=_eval_results(results_by_task, dataset_id, "test") or None,
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
        training=training
        or (
            "Trained with `accelerate launch -m pisa_model.train` on InstructPart TRPS and ORPS rows (LISA's losses: "
            f"language-model cross-entropy x{config.ce_loss_weight}, mask BCE x{config.bce_loss_weight}, "
            f"Dice x{config.dice_loss_weight}); DINOv2 and LLaVA's vision tower stay frozen."
        ),
        evaluation=_evaluation_section(results_by_task),
        citation=CITATION,
    )


def write_model_card(folder: str, *args, **kwargs) -> str:
    path = os.path.join(folder, "README.md")
    render_model_card(*args, **kwargs).save(path)
    return path
