"""The results file of a scoring or evaluation run (`results.json`), one layout for every command.

    {
      "configs": {                       # one block per scored config (trps, orps), in the run's order
        "trps": {"all": {gIoU, cIoU, P@50:95, P@50, num_samples},          # printed "TRPS (all)"
                 "by": {"instruction_type": {type: {...}}, "<label>": {value: {...}}}},
        "orps": {...}
      },
      "paper": {"orps_form": "question", "columns": {"orps_object_part_gIoU": 0.31, ...}},  # paper.py
      "published_ranks": {...},          # with --compare-published, on the official test split: ranks among
                                         # the published methods; on other data "not_ranked": "<why>" instead
      "provenance": {...},               # provenance.py: version, command, ORPS form, data, model
      "execution": {...}                 # processes, seconds: the only part that differs between reruns
    }

Metrics are fractions in [0, 1]. The same data, model and command write the same bytes up to "execution",
which is last; `write_results` refuses to replace another run's file unless told to.
"""

import json
import math
import os
import re
import warnings

from instructpart_dataset.schema import CONFIG_OF_TYPE, CONFIGS, check_config
from instructpart_dataset.toolbox.files import write_json_atomic

from .core import StreamingScorer
from .paper import check_orps_form, format_paper_table, orps_form_note, paper_row, ranks_or_reason
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
    if compare_published:  # ranks only on the official test split (paper.why_not_ranked)
        ranks, reason = ranks_or_reason({"yours": results["paper"]["columns"]}, provenance)
        if reason is None:
            results["published_ranks"] = ranks["yours"]
        else:
            results["not_ranked"] = reason
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
        blocks.append(
            format_paper_table(
                {name: paper["columns"]}, paper["orps_form"], published=True, provenance=results.get("provenance")
            )
        )
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


_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


def _metrics_problem(metrics, field: str) -> str | None:
    """Why a metrics dict is not what the package writes (fractions in [0, 1], a sample count), or None."""
    from .core import METRIC_KEYS

    if not isinstance(metrics, dict):
        return f"{field}: not a mapping of metrics"
    unknown = sorted(set(metrics) - {*METRIC_KEYS, "num_samples"})
    if unknown:
        return f"{field}.{unknown[0]}: unknown metric (expected {', '.join(METRIC_KEYS)}, num_samples)"
    for key in METRIC_KEYS:
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{field}.{key}: missing or not a number ({value!r})"
        if not math.isfinite(value):
            return f"{field}.{key}: {value} is not a finite number"
        if not 0.0 <= value <= 1.0:
            return f"{field}.{key}: {value} is outside [0, 1] (results files hold fractions, not percentages)"
    count = metrics.get("num_samples")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        return f"{field}.num_samples: {count!r} is not a positive whole number"
    return None


def _version(text) -> tuple | None:
    found = re.match(r"(\d+)\.(\d+)", str(text))
    return (int(found[1]), int(found[2])) if found else None


def _configs_problem(configs) -> str | None:
    """What is wrong with a results file's `configs` (the scores of each config and instruction type), or None."""
    if not isinstance(configs, dict) or not configs:
        return "configs: no scored config"
    for config, block in configs.items():
        if config not in CONFIGS:
            return f"configs.{config}: unknown config (expected {', '.join(CONFIGS)})"
        if not isinstance(block, dict):
            return f"configs.{config}: not a mapping"
        problem = _metrics_problem(block.get("all"), f"configs.{config}.all")
        if problem:
            return problem
        by_type = (block.get("by") or {}).get("instruction_type") or {}
        if not isinstance(by_type, dict):
            return f"configs.{config}.by.instruction_type: not a mapping"
        for kind, metrics in by_type.items():
            if kind not in CONFIGS[config]:
                return f"configs.{config}.by.instruction_type.{kind}: not an instruction type of {config}"
            problem = _metrics_problem(metrics, f"configs.{config}.by.instruction_type.{kind}")
            if problem:
                return problem
    return None


def _paper_problem(paper) -> str | None:
    """What is wrong with a results file's `paper` record (ORPS form and the paper's columns), or None."""
    from .paper import ORPS_FORMS, PAPER_COLUMNS

    if not isinstance(paper, dict) or paper.get("orps_form") not in ORPS_FORMS:
        return f"paper.orps_form: expected one of {', '.join(ORPS_FORMS)}"
    columns = paper.get("columns")
    if not isinstance(columns, dict):
        return "paper.columns: not a mapping"
    for column, value in columns.items():
        if column not in PAPER_COLUMNS:
            return f"paper.columns.{column}: unknown column"
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"paper.columns.{column}: {value!r} is not a finite number"
        if not 0.0 <= value <= 1.0:
            return f"paper.columns.{column}: {value} is outside [0, 1]"
    return None


def _dataset_record_problem(data) -> str | None:
    """What is wrong with the provenance's dataset record (each config's fingerprint and row count), or None."""
    for config, found in ((data.get("configs") or {}) if isinstance(data, dict) else {}).items():
        if config not in CONFIGS:
            return f"provenance.dataset.configs.{config}: unknown config"
        if not isinstance(found, dict) or not _FINGERPRINT.fullmatch(str(found.get("fingerprint"))):
            return f"provenance.dataset.configs.{config}.fingerprint: not a sha256: fingerprint"
        rows = found.get("rows")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            return f"provenance.dataset.configs.{config}.rows: {rows!r} is not a positive whole number"
    return None


def validate_results(results: dict, path: str) -> dict:
    """Check a results file against the layout this package writes before it is published (the model card):
    known configs and instruction types, known metric names, finite fractions in [0, 1], paper columns, a
    well-formed dataset record, and the writer's version: a newer major version is refused, a newer minor one
    warned about. Raises ValueError `<path>: <field>: <what>` (one line); returns `results`."""
    from . import provenance as provenance_module

    record = results.get("provenance")
    problem = _configs_problem(results.get("configs")) or _paper_problem(results.get("paper"))
    if not problem and record is not None:
        if not isinstance(record, dict):
            problem = "provenance: not a mapping"
        else:
            problem = _dataset_record_problem(record.get("dataset") or {})
    if problem:
        raise ValueError(f"{path}: {problem}")
    if record is None:
        return results
    written = _version((record.get("package") or {}).get("version"))
    ours = _version(provenance_module.package_version())
    if written and ours and written > ours:
        version = record["package"]["version"]
        if written[0] > ours[0]:
            raise ValueError(
                f"{path}: provenance.package.version: written by instructpart {version}, a newer major version "
                f"than this {provenance_module.package_version()}; upgrade instructpart to publish it"
            )
        warnings.warn(
            f"{path}: written by instructpart {version}, newer than this {provenance_module.package_version()}; "
            "fields it added are not checked",
            stacklevel=2,
        )
    return results


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
    "validate_results",
    "orps_form_note",
    "parse_configs",
    "write_results",
]
