"""The dataset card of an export: YAML `configs` + `dataset_info` (datasets' own writers) and the
Hub's dataset card template filled from the release's facts."""

import os
from collections import Counter

import datasets
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from .schema import (
    CITATION,
    CONFIGS,
    DEFAULT_CONFIG,
    FEATURES,
    HOMEPAGE,
    INSTRUCTION_TYPES,
    LICENSE,
    LICENSE_NOTE,
    PAPER,
)

INSTRUCTION_TABLE = """| index | instruction_type | config | example |
|---|---|---|---|
| 0 | `human` | trps | "If I want to open the cabinet, which part should I use?" (written by annotators) |
| 1 | `gpt4` | trps | the same task, rephrased by GPT-4 |
| 2 | `part_question` | orps | "Where is the handle of the cabinet in this image?" |
| 3 | `part_affordance_question` | orps | "Where is the handle of the cabinet that can be pulled in this image?" |
| 4 | `part_name` | orps | "handle of the cabinet" |
| 5 | `part_affordance_name` | orps | "handle of the cabinet that can be pulled" |"""

FIELDS_TABLE = """| column | type | meaning |
|---|---|---|
| `id` | string | release file stem `<image stem>-<object>-<part>` (spaces as `_`); the key of predictions |
| `image` | image | the RGB photo (EXIF orientation applied on decoding) |
| `mask` | image (mode "1") | the part's ground-truth mask, same size as `image`; `with_format("numpy")` gives a bool (H, W) array |
| `object`, `part` | string | object and part names, e.g. `cabinet`, `handle` |
| `affordance`, `action` | string | what the part affords and the task it serves, e.g. `pull`, `open` |
| `instruction` | string | the instruction of this row |
| `instruction_type` | string | which of the six release variants it is (table above) |
| `train_subset` | int32 | train rows: the smallest nested subset (200, 600, 1200, 1800) holding the entry; null on test |"""


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < limit:
            return name
    return "100K<n<1M"


def _card_data(counts: dict) -> DatasetCardData:
    total_rows = sum(info["num_examples"] for splits in counts.values() for info in splits.values())
    card_data = DatasetCardData(
        pretty_name="InstructPart",
        license=LICENSE,
        language=["en"],
        task_categories=["image-segmentation"],
        tags=["part-segmentation", "affordance", "reasoning-segmentation", "vision-language"],
        size_categories=[_size_category(total_rows)],
    )
    infos = {}
    for config, splits in counts.items():
        split_dict = datasets.SplitDict()
        for split, info in splits.items():
            split_dict.add(
                datasets.SplitInfo(name=split, num_bytes=info["num_bytes"], num_examples=info["num_examples"])
            )
        # As push_to_hub writes them: dataset_size is the Arrow data once loaded, download_size the Parquet
        # files on disk (smaller: Parquet stores an image repeated across a row group's rows once).
        infos[config] = datasets.DatasetInfo(
            config_name=config,
            features=FEATURES,
            splits=split_dict,
            dataset_size=sum(info["num_bytes"] for info in splits.values()),
            download_size=sum(info["download_bytes"] for info in splits.values()),
        )
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    configs = {
        config: {
            "data_files": [{"split": split, "path": f"{config}/{split}-*"} for split in splits],
            **({"default": True} if config == DEFAULT_CONFIG else {}),
        }
        for config, splits in counts.items()
    }
    MetadataConfigs(configs).to_dataset_card_data(card_data)
    return card_data


def _structure_section(counts: dict, index) -> str:
    lines = ["One row per (annotated part, instruction variant). Configs and rows in this export:", ""]
    lines += ["| config | instruction types | " + " | ".join(counts[DEFAULT_CONFIG]) + " |"]
    lines += ["|---|---|" + "---|" * len(counts[DEFAULT_CONFIG])]
    for config, splits in counts.items():
        cells = " | ".join(f"{info['num_examples']:,}" for info in splits.values())
        lines.append(f"| `{config}` | {', '.join(f'`{t}`' for t in CONFIGS[config])} | {cells} |")
    entries = {split: len(samples) for split, samples in index.splits.items()}
    lines += ["", "Annotated parts (entries) per split: " + ", ".join(f"{s} {n:,}" for s, n in entries.items()) + "."]
    if "train" in index.splits:
        subsets = Counter(sample.train_subset for sample in index.splits["train"])
        running, nested = 0, []
        for n in sorted(subsets):
            running += subsets[n]
            nested.append(f"train{n}: {running:,}")
        lines += [
            'The nested training subsets are not stored twice: `load_instructpart(path, split="train600")` '
            "(or filtering `train_subset <= 600`) selects them. Entries per subset: " + ", ".join(nested) + "."
        ]
    lines += ["", "### Instruction variants", "", INSTRUCTION_TABLE, "", "### Fields", "", FIELDS_TABLE]
    return "\n".join(lines)


def write_card(folder: str, counts: dict, index) -> None:
    samples = [sample for split in index.splits.values() for sample in split]
    objects = sorted({s.object for s in samples})
    parts = sorted({s.part for s in samples})
    card = DatasetCard.from_template(
        _card_data(counts),
        pretty_name="InstructPart",
        dataset_summary=(
            "InstructPart (ACL 2025) is a benchmark for task-oriented part segmentation: given a real photo and an "
            'instruction such as "If I want to open the cabinet, which part should I use?", a model outputs the '
            "binary mask of the object part that serves the task (the handle). The full release has 2,400 images, "
            "48 object and 44 part categories, a 600-image test split and a 1,800-image train split released also "
            f"as nested subsets. This export holds {len(samples):,} annotated parts covering {len(objects)} object "
            f"and {len(parts)} part categories."
        ),
        dataset_description=(
            "Each annotated part comes with its object, part, affordance and action labels and six instructions: "
            "a human-written task instruction, its GPT-4 rewrite, and four oracle references to the part. "
            "Two tasks are defined on them: TRPS (task reasoning part segmentation) uses the two task "
            "instructions, ORPS (oracle referring part segmentation) the four part references."
        ),
        curators="Zifu Wan, Yaqi Xie, Ce Zhang, Zhiqiu Lin, Zihan Wang, Simon Stepputtis, Deva Ramanan, Katia Sycara "
        "(Robotics Institute, Carnegie Mellon University)",
        shared_by="The instructpart project, converted from the authors' public release",
        language="English",
        license=LICENSE_NOTE,
        repo=HOMEPAGE,
        paper=f"{PAPER} (ACL 2025)",
        direct_use=(
            "Evaluating and fine-tuning vision-language segmentation models on task-oriented part segmentation:\n\n"
            "```python\nfrom datasets import load_dataset\n\n"
            'test = load_dataset("<this repo>", "trps", split="test").with_format("numpy", columns=["mask"], '
            "output_all_columns=True)\n```\n\n"
            "Score predictions with the `instructpart` metric (`evaluate.load(...)`): gIoU, cIoU, P@50, P@50:95."
        ),
        out_of_scope_use="The test split is for evaluation only: do not train on it. The images are everyday "
        "household scenes and are not meant for identifying people.",
        dataset_structure=_structure_section(counts, index),
        curation_rationale_section=(
            "Part datasets such as PartImageNet, Pascal-Part and PACO label parts without tasks, and affordance "
            "datasets have few affordance classes or only point labels. InstructPart pairs hand-labelled part masks "
            "with task instructions that do not name the part, so that a model must reason about which part serves "
            "the task."
        ),
        data_collection_and_processing_section=(
            "This export is converted from the authors' release layout (`test/`, `train/train{200,600,1200,1800}/`, "
            "`all/` with `images/`, `masks/` and `data_<split>.json`) by `python -m instructpart_dataset export`: "
            "every image and mask is decoded and checked (mask size equals image size, mask values {0,1} or "
            "{0,255}), image bytes are stored unchanged and masks re-encoded as 1-bit PNGs."
        ),
        source_data_producers_section="Real photographs of everyday objects, collected from Flickr (each photo "
        "stays under its photographer's terms); see the paper for the selection.",
        annotation_process_section="Part masks were labelled by hand and task instructions written by annotators, "
        "then rephrased by GPT-4 (instruction 1); see the paper for the protocol.",
        who_are_annotators_section="The authors' annotation team; see the paper.",
        personal_and_sensitive_information="The photos show household objects; people may appear incidentally.",
        bias_risks_limitations=(
            "Part masks cover one part instance per entry; other instances of the same part in the image count "
            "as background. Instructions are English only. The benchmark is small (600 test entries), so "
            "differences of a point or two between models are within noise."
        ),
        bias_recommendations="Report TRPS and ORPS separately, with all four metrics, on the test split.",
        citation_bibtex=CITATION,
        citation_apa="Wan, Z., Xie, Y., Zhang, C., Lin, Z., Wang, Z., Stepputtis, S., Ramanan, D., & Sycara, K. "
        "(2025). InstructPart: Task-Oriented Part Segmentation with Instruction Reasoning. In Proceedings of ACL 2025.",
        glossary="gIoU: mean of per-sample IoU. cIoU: summed intersections over summed unions. P@50: share of "
        "samples with IoU >= 0.5. P@50:95: mean of P@t for t = 0.50, 0.55, ..., 0.95. Instruction types: "
        + ", ".join(f"`{t}`" for t in INSTRUCTION_TYPES)
        + ".",
        more_information=f"Project page: {HOMEPAGE}",
        funded_by="See the paper's acknowledgements.",
        demo="See the `instructpart` metric and the PISA model cards.",
        dataset_card_authors="The instructpart project",
        dataset_card_contact="Open a discussion on this repository.",
    )
    card.save(os.path.join(folder, "README.md"))
