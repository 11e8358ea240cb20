"""The results file of a scoring or evaluation run (`results.json`), one layout for every command.

    {
      "configs": {                       # one block per scored config (trps, orps), in the run's order
        "trps": {"all": {gIoU, cIoU, P@50:95, P@50, num_samples},          # printed "TRPS (all)"
                 "by": {"instruction_type": {type: {...}}, "<label>": {value: {...}}}},
        "orps": {...}
      },
      "paper": {"orps_form": "question", "columns": {"orps_object_part_gIoU": 0.31, ...}},  # paper.py
      "published_ranks": {...},          # with --compare-published: ranks among the published methods
      "provenance": {...},               # provenance.py: version, command, ORPS form, data, model
      "execution": {...}                 # processes, seconds: the only part that differs between reruns
    }

Metrics are fractions in [0, 1]. The same data, model and command write the same bytes up to "execution",
which is last; `write_results` refuses to replace another run's file unless told to.
"""

import json
import os

from instructpart_dataset.schema import CONFIG_OF_TYPE, CONFIGS, check_config
from instructpart_dataset.toolbox.files import write_json_atomic

from .core import StreamingScorer
from .paper import check_orps_form, format_paper_table, orps_form_note, paper_row, rank_against_published
from .tables import combined_label, format_table, results_dict

RESULTS_FILE = "results.json"


def parse_configs(text: str) -> tuple:
    """`"trps,orps"` -> `("trps", "orps")`: known configs, no repeats, in the given order."""
    configs = tuple(part.strip() for part in str(text).split(",") if part.strip())
    if not configs:
        raise ValueError(f"no config in {text!r}: expected one or more of {', '.join(CONFIGS)}, comma-separated")
    for config in configs:
        check_config(config)
    if len(set(configs)) != len(configs):
        raise ValueError(f"config {text!r} names a config twice")
    return configs


def _scorer_of(scorer: StreamingScorer, config: str) -> StreamingScorer:
    """The samples of one config (by their instruction type), as a scorer of their own."""
    part = StreamingScorer()
    for sample in scorer.samples():
        if CONFIG_OF_TYPE[sample["labels"]["instruction_type"]] == config:
            part.add_counts(sample["intersection"], sample["union"], labels=sample["labels"], key=sample["key"])
    return part


def build_results(
    scorer: StreamingScorer,
    configs: tuple,
    *,
    orps_form: str,
    breakdowns: tuple = (),
    compare_published: bool = False,
    extra: dict | None = None,
    provenance: dict | None = None,
) -> dict:
    """The results dict (see the module docstring) of a scorer holding the rows of `configs`."""
    check_orps_form(orps_form)
    blocks = {}
    by_type = {}
    for config in configs:
        part = _scorer_of(scorer, config)
        if len(part) == 0:
            raise ValueError(f"no scored {config} rows")
        numbers = results_dict(part, rows_by="instruction_type")
        for label in breakdowns:
            numbers["by"].update(results_dict(part, rows_by=None, breakdown=label)["by"])
        blocks[config] = {"all": numbers["overall"], "by": numbers["by"]}
        by_type.update(numbers["by"]["instruction_type"])
    results = {"configs": blocks, "paper": {"orps_form": orps_form, "columns": paper_row(by_type, orps_form)}}
    if compare_published:
        results["published_ranks"] = rank_against_published({"yours": results["paper"]["columns"]})["yours"]
    results.update(extra or {})
    if provenance is not None:
        results["provenance"] = provenance
    return results


def config_rows(block: dict, config: str) -> dict:
    """The printed rows of one config block: its instruction types, then the combined row."""
    rows = dict(block["by"]["instruction_type"])
    rows[combined_label(config)] = block["all"]
    return rows


def format_results(results: dict, name: str, *, breakdowns: tuple = (), compare_published: bool = False) -> str:
    """What the score and evaluate commands print: per config its table (instruction types and the combined
    row), the breakdowns asked for, then the paper layout (with the published methods when comparing)."""
    blocks = []
    for config, block in results["configs"].items():
        blocks.append(format_table(config_rows(block, config), row_header="instruction_type"))
        for label in breakdowns:
            blocks.append(format_table(block["by"][label], row_header=f"{label} ({config.upper()})"))
    paper = results["paper"]
    if compare_published:
        blocks.append(format_paper_table({name: paper["columns"]}, paper["orps_form"], published=True))
    else:
        blocks.append(format_paper_table({name: paper["columns"]}, paper["orps_form"]))
    return "\n\n".join(blocks)


def check_not_overwriting(path: str, overwrite: bool, what: str = "--output-dir") -> None:
    """Refuse (FileExistsError, one line) to replace another run's results file unless `overwrite`."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"{path}: results of another run are already there; pass --overwrite to replace them or choose another {what}"
        )


def write_results(path: str, results: dict, overwrite: bool) -> None:
    check_not_overwriting(path, overwrite)
    write_json_atomic(path, results)


def load_results(path: str) -> dict:
    """A results file as written by `write_results`; one-line errors naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: results file not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: malformed JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(results, dict) or not isinstance(results.get("configs"), dict) or "paper" not in results:
        raise ValueError(f"{path}: not a results file of the evaluate or score command (no 'configs' and 'paper')")
    return results


__all__ = [
    "RESULTS_FILE",
    "build_results",
    "check_not_overwriting",
    "config_rows",
    "format_results",
    "load_results",
    "orps_form_note",
    "parse_configs",
    "write_results",
]
