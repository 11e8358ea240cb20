"""The paper's results table: its layout, its published rows, and your models placed among them.

The InstructPart paper (ACL 2025) reports one row per method and four column groups of four metrics:

| column group (CSV prefix)       | task | instruction variant of the release                          |
|---------------------------------|------|-------------------------------------------------------------|
| `orps_object_part`              | ORPS | 2 `part_question` (question form) or 4 `part_name` (name form) |
| `orps_object_part_affordance`   | ORPS | 3 `part_affordance_question` or 5 `part_affordance_name`      |
| `trps_human`                    | TRPS | 0 `human`                                                     |
| `trps_gpt4`                     | TRPS | 1 `gpt4`                                                      |

metrics in the paper's order gIoU, cIoU, P@50:95, P@50; a column is `<group>_<metric>`, e.g.
`trps_human_gIoU`. The paper does not say whether its methods received the part as a question or as a
name, so the ORPS columns are computed in the form chosen by `orps_form` ("question" by default), which
is recorded with the results and printed under every table.
"""

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from instructpart_dataset.schema import CONFIGS, INSTRUCTION_TYPES

from .core import METRIC_KEYS

ORPS_FORMS = ("question", "name")
DEFAULT_ORPS_FORM = "question"
PUBLISHED_CSV = "published_table2.csv"
PUBLISHED_SOURCE = (
    "InstructPart (Wan et al., ACL 2025), main results table as published on the authors' project page "
    "(repository zifuwan/PISA, commit 1e28142, static/images/quantitative_results.png); "
    "10 zero-shot methods on the 600-entry test split, percentages"
)

# The official test split the published rows were measured on, as `provenance.dataset_fingerprint` identifies it
# (the same for the release folder and its Hub export). Ranks against the published rows are given only for
# results on exactly these rows (`why_not_ranked`).
OFFICIAL_TEST_SPLIT = {
    "trps": {"rows": 1200, "fingerprint": "sha256:2e4ab46f4d8104b530dd76f6efa5ac536aa5508a0a7526dd2b71a17ae90eaf3b"},
    "orps": {"rows": 2400, "fingerprint": "sha256:cddf043f2bb0baa8e973abfaa0784b781a70041d70bdef61aac898d6a43a9cf2"},
}


@dataclass(frozen=True)
class ColumnGroup:
    """One column group of the paper's table."""

    key: str  # the CSV header prefix, e.g. "trps_human"
    title: str  # printed over the group, e.g. "TRPS human"
    task: str  # the config its rows come from
    question: str  # instruction type read in the question form
    name: str  # instruction type read in the name form

    def instruction_type(self, orps_form: str = DEFAULT_ORPS_FORM) -> str:
        return getattr(self, check_orps_form(orps_form))

    @property
    def label(self) -> str:
        """The group in one word, for rank lines ("gIoU TRPS-human: 3rd of 11")."""
        return self.title.replace(" ", "-")


# The paper's column order.
COLUMN_GROUPS = (
    ColumnGroup("orps_object_part", "ORPS object-part", "orps", INSTRUCTION_TYPES[2], INSTRUCTION_TYPES[4]),
    ColumnGroup(
        "orps_object_part_affordance", "ORPS object-part-affordance", "orps", INSTRUCTION_TYPES[3], INSTRUCTION_TYPES[5]
    ),
    ColumnGroup("trps_human", "TRPS human", "trps", INSTRUCTION_TYPES[0], INSTRUCTION_TYPES[0]),
    ColumnGroup("trps_gpt4", "TRPS GPT-4", "trps", INSTRUCTION_TYPES[1], INSTRUCTION_TYPES[1]),
)
PAPER_COLUMNS = tuple(f"{group.key}_{metric}" for group in COLUMN_GROUPS for metric in METRIC_KEYS)


def check_orps_form(orps_form: str) -> str:
    if orps_form not in ORPS_FORMS:
        raise ValueError(f"unknown ORPS form {orps_form!r}: expected one of {', '.join(ORPS_FORMS)}")
    return orps_form


def orps_form_note(orps_form: str) -> str:
    """The line printed under every paper-layout table."""
    kinds = [group.instruction_type(orps_form) for group in COLUMN_GROUPS[:2]]
    variants = [INSTRUCTION_TYPES.index(kind) for kind in kinds]
    return (
        f"ORPS form: {orps_form} (object-part = variant {variants[0]} {kinds[0]}, object-part-affordance = "
        f"variant {variants[1]} {kinds[1]}; the paper does not say which form its methods received)"
    )


def paper_row(by_instruction_type: dict, orps_form: str = DEFAULT_ORPS_FORM) -> dict:
    """`{column: fraction or None}` in the paper's layout from `{instruction_type: metrics}` (fractions in
    [0, 1], e.g. a `StreamingScorer.compute(by="instruction_type")`); None where that type was not scored."""
    check_orps_form(orps_form)
    row = {}
    for group in COLUMN_GROUPS:
        metrics = by_instruction_type.get(group.instruction_type(orps_form))
        for metric in METRIC_KEYS:
            row[f"{group.key}_{metric}"] = None if metrics is None else float(metrics[metric])
    return row


@lru_cache(maxsize=1)
def _published_rows() -> tuple:
    text = resources.files(__package__).joinpath(PUBLISHED_CSV).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != ("method", "family", *PAPER_COLUMNS):
        raise ValueError(f"{PUBLISHED_CSV}: unexpected header {reader.fieldnames}")
    rows = []
    for record in reader:
        row = {"method": record["method"], "family": record["family"]}
        row.update({column: float(record[column]) for column in PAPER_COLUMNS})
        row["printed_average"] = record["method"] == "Average"
        rows.append(row)
    return tuple(rows)


def _dataset_block(provenance_or_fingerprints) -> dict:
    """`{"split", "synthetic", "configs": {config: {"rows", "fingerprint"}}}` from any form `why_not_ranked` takes."""
    found = provenance_or_fingerprints
    if not isinstance(found, dict):
        return {}
    if isinstance(found.get("dataset"), dict):  # a provenance block
        found = found["dataset"]
    if isinstance(found.get("configs"), dict):  # a dataset identity
        return found
    # `{config: {"rows", "fingerprint"}}` or `{config: "sha256:..."}`
    configs = {
        config: value if isinstance(value, dict) else {"fingerprint": value}
        for config, value in found.items()
        if config in CONFIGS
    }
    return {"configs": configs}


def _config_names(config) -> tuple:
    if isinstance(config, str):
        return tuple(part.strip() for part in config.split(",") if part.strip())
    return tuple(config)


def _reason_for(dataset: dict, config: str) -> str | None:
    official = OFFICIAL_TEST_SPLIT[config]
    found = (dataset.get("configs") or {}).get(config)
    if not isinstance(found, dict) or not found.get("fingerprint"):
        return f"no {config.upper()} dataset fingerprint recorded"
    if found["fingerprint"] == official["fingerprint"]:
        return None
    if dataset.get("synthetic"):
        return "synthetic data"
    split = dataset.get("split")
    if split is not None and split != "test":
        return f"not the official test split: the {split} split"
    rows = found.get("rows")
    if not isinstance(rows, int):
        return "not the official test split: its fingerprint differs"
    per_entry = len(CONFIGS[config])  # rows per annotated part: 2 TRPS instructions, 4 ORPS ones
    if rows != official["rows"]:
        if rows % per_entry == 0:
            return f"not the official test split: {rows // per_entry:,} of {official['rows'] // per_entry:,} entries"
        return f"not the official test split: {rows:,} of {official['rows']:,} {config.upper()} rows"
    return "not the official test split: same size, other data (its fingerprint differs)"


def why_not_ranked(provenance_or_fingerprints, config) -> str | None:
    """Why results may not be ranked against the published rows, in one line; None when they may.

    The published rows were measured on the official 600-entry test split, so a rank means something only for
    results on exactly those rows: every config's dataset fingerprint (`provenance.dataset_fingerprint`) must
    equal the official one (`OFFICIAL_TEST_SPLIT`; a release folder and its Hub export give the same).

    Args:
        provenance_or_fingerprints: any of
            - a results file's `provenance` block (`{"dataset": {...}, ...}`; `results["provenance"]`),
            - its `dataset` block (`provenance.dataset_identity`: `{"source", "split", "configs": {config:
              {"rows", "fingerprint"}}}`, optionally `"synthetic": True` for generated data),
            - `{config: {"rows", "fingerprint"}}` or `{config: "sha256:..."}`,
            - None (nothing recorded: not ranked).
        config: the config(s) the ranked numbers come from: `"trps"`, `"orps"`, `"trps,orps"` or a sequence.

    Returns:
        None when every config's fingerprint is the official one; else the reason, e.g. `"synthetic data"`,
        `"not the official test split: 60 of 600 entries"`, `"not the official test split: the train600 split"`,
        `"no dataset fingerprint recorded"` (configs whose reasons differ are each named).
    """
    configs = _config_names(config)
    if not configs:
        raise ValueError("why_not_ranked: no config given")
    for name in configs:
        if name not in OFFICIAL_TEST_SPLIT:
            raise ValueError(f"unknown config {name!r}: expected one of {', '.join(OFFICIAL_TEST_SPLIT)}")
    dataset = _dataset_block(provenance_or_fingerprints)
    if not dataset.get("configs"):
        return "no dataset fingerprint recorded"
    reasons = {name: _reason_for(dataset, name) for name in configs}
    found = {reason for reason in reasons.values() if reason is not None}
    if not found:
        return None
    if len(found) == 1:
        return found.pop()
    return "; ".join(f"{name.upper()}: {reason}" for name, reason in reasons.items() if reason is not None)


def ranked_configs(models: dict) -> tuple:
    """The configs whose paper columns any of `models` (`{name: paper_row}`) has: what its ranks would rest on."""
    return tuple(
        config
        for config in CONFIGS
        if any(
            row.get(f"{group.key}_{metric}") is not None
            for row in models.values()
            for group in COLUMN_GROUPS
            if group.task == config
            for metric in METRIC_KEYS
        )
    )


def not_ranked_line(reason: str) -> str:
    """The line printed instead of ranks."""
    return f"No ranks against the published rows: {reason} (they were measured on the official 600-entry test split; shown for reference)."


def published_results(include_average: bool = True) -> list:
    """The paper's published rows, in its order: a list of dicts with `method`, `family` (OVS
    open-vocabulary segmentation, RES referring segmentation, RS reasoning segmentation), the 16 values
    keyed exactly as the CSV header names them (`PAPER_COLUMNS`, e.g. `trps_human_gIoU`), and
    `printed_average` (True only for the last row).

    Source: the main results table of InstructPart (Wan et al., ACL 2025) as published on the authors'
    project page (repository zifuwan/PISA, commit 1e28142, `static/images/quantitative_results.png`),
    transcribed cell by cell into `published_table2.csv` (package data). 10 zero-shot methods, 600-entry
    test split. Values are **percentages as printed** (two decimals), not fractions: `22.5` is the
    printed 22.50.

    Quirks of the printed table, kept as printed:
    - The `Average` row (family "") is the row the paper prints, not recomputed: it differs from the mean
      of the 10 rows in four cells (ORPS object-part-affordance gIoU 21.95 vs 22.50 and cIoU 21.10 vs
      21.90, TRPS human P@50 14.44 vs 14.07, TRPS GPT-4 gIoU 17.59 vs 18.91). It is marked
      `printed_average=True` and is never ranked against.
    - X-Decoder and SEEM have identical object-part and object-part-affordance columns.
    - The paper does not say whether its methods got the ORPS part as a question or a name.
    """
    return [dict(row) for row in _published_rows() if include_average or not row["printed_average"]]


def printed(value: float) -> float:
    """A fraction as the table prints it: a percentage with two decimals (ranks compare these)."""
    return float(f"{100 * value:.2f}")


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def rank_against_published(models: dict) -> dict:
    """Each model's rank in each column among the published methods and the given models.

    `models` maps a name to its `paper_row` (fractions). A model is compared at the value the table prints
    (two decimals of a percentage), like the published values. Ranks are competition ranks: 1 + the number
    of strictly better entries, so tied entries share a rank ("1224"). The printed Average row is not ranked.

    Returns `{model: {column: {"rank", "of", "tied_with": [names]}}}` for the columns the model has.
    """
    published = published_results(include_average=False)
    ranks = {}
    for column in PAPER_COLUMNS:
        entries = [(row["method"], row[column]) for row in published]
        entries += [(name, printed(row[column])) for name, row in models.items() if row.get(column) is not None]
        for name, row in models.items():
            if row.get(column) is None:
                continue
            mine = printed(row[column])
            better = sum(value > mine for _, value in entries)
            tied = [other for other, value in entries if value == mine and other != name]
            ranks.setdefault(name, {})[column] = {"rank": 1 + better, "of": len(entries), "tied_with": tied}
    return ranks


# Model specs that run a published method itself (its authors' released weights, proven equal to their code),
# keyed by the spec's prefix: such a model is that paper row's system, not a competitor of it.
SAME_SYSTEM_PREFIXES = {"lisa:": "LISA"}


def published_counterpart(name: str) -> str | None:
    """The published method a model named `name` (an adapter spec) is the same system as, e.g. "LISA" for
    `lisa:xinlai/LISA-7B-v1`; None for any other model."""
    for prefix, method in SAME_SYSTEM_PREFIXES.items():
        if str(name).lower().startswith(prefix):
            return method
    return None


def same_system_lines(names) -> list:
    """One line per model that is a published method's own system, linking it to that row."""
    lines = []
    for name in names:
        method = published_counterpart(name)
        if method is not None:
            lines.append(
                f"{name} runs {method} as {method}'s own code does: converted from the released weights, it is the same "
                f"system as the published {method} row, whose values it should match on the full test split"
            )
    return lines


def rank_lines(ranks: dict) -> list:
    """`"gIoU TRPS-human: 3rd of 11"` per column (ties say with whom), one line per model and column group."""
    lines = []
    for model, columns in ranks.items():
        lines.append(f"{model} among the published methods:")
        for group in COLUMN_GROUPS:
            parts = []
            for metric in METRIC_KEYS:
                found = columns.get(f"{group.key}_{metric}")
                if found is None:
                    continue
                tie = f" (tied with {', '.join(found['tied_with'])})" if found["tied_with"] else ""
                parts.append(f"{metric} {group.label}: {ordinal(found['rank'])} of {found['of']}{tie}")
            if parts:
                lines.append("  " + "; ".join(parts))
    return lines


def _cell(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def ranks_or_reason(models: dict, provenance) -> tuple:
    """`(ranks, None)` when `models` were scored on the official test split (`why_not_ranked`), else `({}, reason)`."""
    configs = ranked_configs(models)
    reason = why_not_ranked(provenance, configs) if configs else "no paper column was scored"
    return (rank_against_published(models), None) if reason is None else ({}, reason)


def format_paper_table(
    models: dict, orps_form: str = DEFAULT_ORPS_FORM, *, published: bool = False, provenance=None
) -> str:
    """The paper's table as text: one row per model (`{name: paper_row}`, fractions), the four column
    groups x gIoU, cIoU, P@50:95, P@50 in percent, and the ORPS form under it. With `published`, the
    paper's methods come first (family OVS/RES/RS), your models follow marked `*`, the printed Average
    row closes the table, and under it each model's rank in each column, or (unless `provenance`, the
    scored data's, shows the official test split: `why_not_ranked`) one line saying why there are none."""
    header = ["method", "family", *(metric for _ in COLUMN_GROUPS for metric in METRIC_KEYS)]
    body, rules = [], []
    if published:
        for row in published_results(include_average=False):
            body.append([row["method"], row["family"], *(_cell(row[c]) for c in PAPER_COLUMNS)])
        rules.append(len(body))
    for name, row in models.items():
        values = [None if row.get(c) is None else 100 * row[c] for c in PAPER_COLUMNS]
        body.append([f"* {name}" if published else name, "yours" if published else "", *map(_cell, values)])
    if published:
        rules.append(len(body))
        average = published_results()[-1]
        body.append(["Average (as printed)", "", *(_cell(average[c]) for c in PAPER_COLUMNS)])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    group_width = [sum(widths[2 + 4 * g + m] + 3 for m in range(4)) - 3 for g in range(len(COLUMN_GROUPS))]

    def line(cells):
        left = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        return "| " + " | ".join(left + [c.rjust(w) for c, w in zip(cells[2:], widths[2:])]) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    groups = "| " + " " * (widths[0] + widths[1] + 3) + " | "
    groups += " | ".join(g.title.center(w) for g, w in zip(COLUMN_GROUPS, group_width)) + " |"
    lines = [groups, line(header), rule]
    for index, cells in enumerate(body):
        if index in rules:
            lines.append(rule)
        lines.append(line(cells))
    notes = [orps_form_note(orps_form)]
    if published:
        notes.append(f"Published rows: {PUBLISHED_SOURCE}. * = yours (the last line says whether they rank).")
        notes += same_system_lines(models)
        ranks, reason = ranks_or_reason(models, provenance)
        notes += rank_lines(ranks) if reason is None else [not_ranked_line(reason)]
    return "\n".join(lines + notes)


def format_paper_markdown(
    models: dict, orps_form: str = DEFAULT_ORPS_FORM, *, published: bool = False, provenance=None
) -> str:
    """`format_paper_table` as a Markdown table (model cards): group and metric in each header cell, your
    models in bold among the published rows when `published`, the ORPS form and the ranks (or why there are
    none) under it. Cell text is the caller's: names are escaped by the caller."""
    header = ["method", "family", *(f"{g.title} {metric}" for g in COLUMN_GROUPS for metric in METRIC_KEYS)]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(PAPER_COLUMNS)]
    if published:
        for row in published_results(include_average=False):
            lines.append(
                "| " + " | ".join([row["method"], row["family"], *(_cell(row[c]) for c in PAPER_COLUMNS)]) + " |"
            )
    for name, row in models.items():
        values = [_cell(None if row.get(c) is None else 100 * row[c]) for c in PAPER_COLUMNS]
        bold = [f"**{v}**" if published and v != "—" else v for v in values]
        lines.append(
            "| " + " | ".join([f"**{name}**" if published else name, "yours" if published else "", *bold]) + " |"
        )
    if published:
        average = published_results()[-1]
        lines.append("| Average (as printed) |  | " + " | ".join(_cell(average[c]) for c in PAPER_COLUMNS) + " |")
    notes = ["", orps_form_note(orps_form) + "."]
    if published:
        notes.append(f"Published rows: {PUBLISHED_SOURCE}.")
        notes += same_system_lines(models)
        ranks, reason = ranks_or_reason(models, provenance)
        if reason is None:
            notes += ["", *(f"- {line.strip()}" for line in rank_lines(ranks) if line.startswith("  "))]
        else:
            notes += ["", not_ranked_line(reason)]
    return "\n".join(lines + notes)


def add_orps_form_argument(parser) -> None:
    """`--orps-form question|name`, as the score, report and evaluate commands take it."""
    parser.add_argument(
        "--orps-form",
        choices=ORPS_FORMS,
        default=DEFAULT_ORPS_FORM,
        help="ORPS columns of the paper table from the part question (variants 2/3) or the part name (4/5)",
    )


__all__ = [
    "COLUMN_GROUPS",
    "DEFAULT_ORPS_FORM",
    "OFFICIAL_TEST_SPLIT",
    "ORPS_FORMS",
    "PAPER_COLUMNS",
    "PUBLISHED_SOURCE",
    "add_orps_form_argument",
    "check_orps_form",
    "format_paper_markdown",
    "format_paper_table",
    "not_ranked_line",
    "ordinal",
    "orps_form_note",
    "paper_row",
    "published_results",
    "rank_against_published",
    "rank_lines",
    "ranked_configs",
    "ranks_or_reason",
    "why_not_ranked",
]
