"""Paper-style tables and the results JSON of a scorer (plain Python, no third-party imports)."""

from .core import METRIC_KEYS, StreamingScorer


def combined_label(config: str) -> str:
    """The one name of a task's combined row (all its instruction types pooled), in every table and tool:
    "TRPS (all)", "ORPS (all)"; results files keep it under `configs.<config>.all`."""
    return f"{config.upper()} (all)"


def format_table(rows: dict, row_header: str = "instruction_type") -> str:
    """A Markdown table, one row per entry of `rows` (`{row name: metrics dict}`), in their order.

    Columns follow the paper: gIoU, cIoU, P@50:95, P@50, as percentages with two decimals; an
    `N` column is added when every row's dict has `num_samples` (as `results_dict` writes).
    """
    if not rows:
        raise ValueError("no rows to format")
    with_counts = all("num_samples" in metrics for metrics in rows.values())
    header = [row_header, *METRIC_KEYS] + (["N"] if with_counts else [])
    body = []
    for name, metrics in rows.items():
        missing = [key for key in METRIC_KEYS if key not in metrics]
        if missing:
            raise ValueError(f"row {name!r} lacks {', '.join(missing)}")
        cells = [str(name)] + [f"{100 * metrics[key]:.2f}" for key in METRIC_KEYS]
        body.append(cells + ([str(metrics["num_samples"])] if with_counts else []))
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]

    def line(cells):
        first = cells[0].ljust(widths[0])
        return "| " + " | ".join([first] + [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (width + 1) + ":" for width in widths[1:]]) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def _with_sizes(metrics_by_group: dict, sizes: dict) -> dict:
    return {str(value): {**metrics, "num_samples": sizes[value]} for value, metrics in metrics_by_group.items()}


def results_dict(
    scorer: StreamingScorer, rows_by: str | None = "instruction_type", breakdown: str | None = None
) -> dict:
    """The JSON every scoring/evaluation command writes (fractions in [0, 1]):

        {"overall": {gIoU, cIoU, P@50:95, P@50, num_samples},
         "by": {"<rows_by>": {value: {..., num_samples}}, "<breakdown>": {value: {...}}}}

    `rows_by` groups keep first-seen order (the data's order); `breakdown` groups are sorted by name.
    """
    overall = {**scorer.compute(), "num_samples": len(scorer)}
    by = {}
    if rows_by is not None:
        by[rows_by] = _with_sizes(scorer.compute(by=rows_by), scorer.group_sizes(rows_by))
    if breakdown is not None:
        groups = _with_sizes(scorer.compute(by=breakdown), scorer.group_sizes(breakdown))
        by[breakdown] = dict(sorted(groups.items()))
    return {"overall": overall, "by": by}
