"""Names shared by every layer: configs, instruction types, splits, sample ids, row features.

`FEATURES` (the `datasets.Features` of a row) is built on first use, so that the layers that never build a
`datasets.Dataset` (the metric core, PISA's model, training and evaluation on a release folder read without
`datasets`, as on an offline GPU node) import this module without `datasets` installed.
"""

# Release instruction indices 0..5, in this order.
INSTRUCTION_TYPES = (
    "human",
    "gpt4",
    "part_question",
    "part_affordance_question",
    "part_name",
    "part_affordance_name",
)
CONFIGS = {
    "trps": INSTRUCTION_TYPES[0:2],  # task reasoning part segmentation
    "orps": INSTRUCTION_TYPES[2:6],  # oracle referring part segmentation
}
DEFAULT_CONFIG = "trps"

# Nested training subsets of the release: train200 ⊂ train600 ⊂ train1200 ⊂ train1800.
TRAIN_SUBSETS = (200, 600, 1200, 1800)
SPLITS = ("test", "train") + tuple(f"train{n}" for n in TRAIN_SUBSETS)

# The label columns of a row, by which scores are broken down.
LABEL_COLUMNS = ("object", "part", "affordance", "action")
# The labels a scored sample carries (a scorer's `labels=`): its instruction type and the label columns.
SCORE_LABELS = ("instruction_type", *LABEL_COLUMNS)
ENTRY_FIELDS = (*LABEL_COLUMNS, "instruction")
CONFIG_OF_TYPE = {kind: config for config, kinds in CONFIGS.items() for kind in kinds}


def _features():
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "mask": datasets.Image(mode="1"),
            "object": datasets.Value("string"),
            "part": datasets.Value("string"),
            "affordance": datasets.Value("string"),
            "action": datasets.Value("string"),
            "instruction": datasets.Value("string"),
            "instruction_type": datasets.Value("string"),
            "train_subset": datasets.Value("int32"),
        }
    )


def __getattr__(name):
    if name == "FEATURES":
        globals()["FEATURES"] = features = _features()
        return features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sample_id(image_path: str, object_name: str, part_name: str) -> str:
    """The release file stem of one annotated part: `<image stem>-<object>-<part>`, spaces as `_`."""
    stem = image_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{stem}-{object_name.replace(' ', '_')}-{part_name.replace(' ', '_')}"


def sample_key(instruction_type: str, sample: str) -> str:
    """The key of a scored sample, `<instruction_type>/<id>`: ids repeat across instruction variants, keys do not."""
    return f"{instruction_type}/{sample}"


def parse_sample_key(key: str) -> tuple:
    """`"<instruction_type>/<id>"` -> `(instruction_type, id)`; a ValueError for anything else."""
    kind, sep, sample = str(key).partition("/")
    if not sep or kind not in INSTRUCTION_TYPES or not sample:
        raise ValueError(f"sample key {key!r} is not <instruction_type>/<id> (types: {', '.join(INSTRUCTION_TYPES)})")
    return kind, sample


def row_key(row: dict) -> str:
    """`sample_key` of a dataset row."""
    return sample_key(row["instruction_type"], row["id"])


def row_labels(row: dict) -> dict:
    """The `SCORE_LABELS` of a dataset row (or of a dict of columns' values)."""
    return {name: row[name] for name in SCORE_LABELS}


def check_config(config: str) -> str:
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}: expected one of {', '.join(CONFIGS)}")
    return config


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return split


HOMEPAGE = "https://zifuwan.github.io/InstructPart/"
PAPER = "https://arxiv.org/abs/2505.18291"
# The authors' release ships no licence file and its photos come from Flickr, each under its photographer's
# terms: no licence is claimed for the data (the Hub card spec's `unknown`); LICENSE_NOTE says so in words.
LICENSE = "unknown"
LICENSE_NOTE = (
    "Not stated: the authors' release ships no licence file, and its images are photographs from Flickr that "
    f"remain under their photographers' terms. Ask the authors ({HOMEPAGE}) before redistributing the data or "
    "using it beyond research. (The instructpart code that converts it is MIT-licensed; that covers the code only.)"
)
CITATION = """@inproceedings{wan2025instructpart,
  title     = {InstructPart: Task-Oriented Part Segmentation with Instruction Reasoning},
  author    = {Wan, Zifu and Xie, Yaqi and Zhang, Ce and Lin, Zhiqiu and Wang, Zihan and
               Stepputtis, Simon and Ramanan, Deva and Sycara, Katia},
  booktitle = {Proceedings of the 63rd Annual Meeting of the Association for Computational Linguistics (ACL)},
  year      = {2025}
}"""
