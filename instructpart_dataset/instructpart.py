"""`datasets` builder for a local copy of the official InstructPart release.

datasets 5.x no longer runs loading scripts through `load_dataset`, so this
builder is instantiated directly (`load_instructpart` does it for you):

    builder = InstructPart(config_name="trps", data_dir="/path/to/release")
    builder.download_and_prepare()
    test = builder.as_dataset(split="test")

The Hub copy of the benchmark is script-free Parquet (`python -m instructpart_dataset export`).
"""

from dataclasses import dataclass

import datasets

from .release import read_sample_files, rows_of, scan_release
from .schema import CITATION, CONFIGS, FEATURES, HOMEPAGE, LICENSE

DESCRIPTION = (
    "InstructPart: task-oriented part segmentation with instruction reasoning. Given a real photo and an "
    "instruction, segment the object part that serves the task. TRPS rows carry the task instructions "
    "(human, gpt4); ORPS rows the oracle part references (part_question, part_affordance_question, "
    "part_name, part_affordance_name)."
)


@dataclass
class InstructPartConfig(datasets.BuilderConfig):
    """A config is a set of instruction variants; `release_signature` keys the cache to the files' state."""

    instruction_types: tuple = ()
    release_signature: str | None = None


class InstructPart(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIG_CLASS = InstructPartConfig
    BUILDER_CONFIGS = [
        InstructPartConfig(
            name=name,
            version=datasets.Version("1.0.0"),
            description=f"{name.upper()}: instruction variants {', '.join(types)}",
            instruction_types=types,
        )
        for name, types in CONFIGS.items()
    ]
    DEFAULT_CONFIG_NAME = "trps"

    def __init__(self, *args, release_index=None, **kwargs):
        """`release_index`: the caller's `scan_release` of `data_dir`, so the json is read (and its warnings
        logged) once."""
        super().__init__(*args, **kwargs)
        self._release_index = release_index

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=DESCRIPTION,
            features=FEATURES,
            homepage=HOMEPAGE,
            citation=CITATION,
            license=LICENSE,
        )

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise ValueError("InstructPart needs data_dir=<local copy of the release>")
        index = self._release_index or scan_release(self.config.data_dir)
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"samples": samples})
            for split, samples in index.splits.items()
        ]

    def _generate_examples(self, samples):
        for sample in samples:
            files = read_sample_files(sample)
            for row in rows_of(sample, files, self.config.instruction_types):
                yield f"{row['id']}/{row['instruction_type']}", row
