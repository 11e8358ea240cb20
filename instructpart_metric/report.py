"""The HTML report: paper-style tables, the ORPS − TRPS reasoning gap, gIoU per category, example overlays.

    from instructpart_metric.report import write_report
    html_path = write_report("out/report", {"PISA": scorer, ...}, {"PISA": "out/predictions/PISA", ...},
                             [trps_test, orps_test])

or from the command line, scoring prediction folders first (with `score_predictions`):

    python -m instructpart_metric report --data-dir RELEASE_OR_HUB --split test \\
        --predictions full-image=out/predictions/full-image --predictions PISA=out/predictions/PISA --out out/report

Writes `<out>/report.html` (one self-contained page: styles inline, every picture a PNG data URI)
and `<out>/report.json` (the numbers on the page, fractions in [0, 1]).
"""

import argparse
import os

import numpy as np
from tqdm.auto import tqdm

from instructpart_dataset.schema import (
    CONFIG_OF_TYPE,
    CONFIGS,
    INSTRUCTION_TYPES,
    LABEL_COLUMNS,
    SPLITS,
    parse_sample_key,
    sample_key,
)
from instructpart_dataset.toolbox.files import write_json_atomic, write_text_atomic

from . import report_html as html
from .core import METRIC_KEYS, StreamingScorer
from .paper import (
    COLUMN_GROUPS,
    DEFAULT_ORPS_FORM,
    PAPER_COLUMNS,
    PUBLISHED_SOURCE,
    add_orps_form_argument,
    check_orps_form,
    format_paper_table,
    not_ranked_line,
    orps_form_note,
    paper_row,
    printed,
    published_results,
    ranks_or_reason,
)
from .predictions import read_prediction, score_predictions
from .provenance import command_line, dataset_identity, evaluated_by, format_provenance, provenance
from .report_figures import bar_chart_png, model_colour, overlay_pngs, published_chart_png
from .tables import combined_label, format_table

EXAMPLE_RANKS = ("best", "median", "worst")
CONFIG_TITLES = {"trps": "TRPS (task reasoning)", "orps": "ORPS (oracle referring)"}


class RowIndex:
    """Finds a dataset row by (instruction_type, sample id) across the given datasets (one per config).

    Only the text columns are read up front; an image and its mask are decoded when a row is fetched.
    """

    def __init__(self, datasets):
        self._datasets = list(datasets)
        self._where = {}
        self._labels = {}
        for d, dataset in enumerate(self._datasets):
            columns = dataset.select_columns(["id", "instruction_type", "instruction", *LABEL_COLUMNS]).to_dict()
            for r, (sample, kind) in enumerate(zip(columns["id"], columns["instruction_type"])):
                self._where[(kind, sample)] = (d, r)
                self._labels[(kind, sample)] = {
                    "instruction_type": kind,
                    "instruction": columns["instruction"][r],
                    **{name: columns[name][r] for name in LABEL_COLUMNS},
                }

    def __contains__(self, ref) -> bool:
        return ref in self._where

    def __iter__(self):
        return iter(self._where)

    def labels(self, ref) -> dict:
        """instruction_type, instruction, object, part, affordance and action of one row."""
        if ref not in self._labels:
            raise ValueError(f"sample {ref[1]!r} ({ref[0]}) is not in the dataset the report was given")
        return self._labels[ref]

    def row(self, ref) -> dict:
        d, r = self._where[ref]
        return self._datasets[d][r]


def _relabelled(scorer: StreamingScorer, rows: RowIndex, model: str) -> list:
    """The scorer's samples with the dataset's labels (config, type, object, part, affordance, action)."""
    samples = []
    for sample in scorer.samples():
        ref = parse_sample_key(sample["key"])
        if ref not in rows:
            raise ValueError(f"model {model!r}: scored sample {ref[1]!r} ({ref[0]}) is not in the dataset")
        labels = {k: v for k, v in rows.labels(ref).items() if k != "instruction"}
        labels["config"] = CONFIG_OF_TYPE[ref[0]]
        samples.append({**sample, "ref": ref, "labels": labels})
    if not samples:
        raise ValueError(f"model {model!r}: no scored samples")
    return samples


def _scorer_of(samples) -> StreamingScorer:
    scorer = StreamingScorer()
    for sample in samples:
        scorer.add_counts(
            sample["intersection"], sample["union"], labels=sample["labels"], key=sample_key(*sample["ref"])
        )
    return scorer


def _plain(metrics: dict, count: int) -> dict:
    return {**{key: float(metrics[key]) for key in METRIC_KEYS}, "num_samples": int(count)}


def summarise(scorer: StreamingScorer, rows: RowIndex, model: str, orps_form: str = DEFAULT_ORPS_FORM) -> dict:
    """The numbers of one model: per instruction type, per config, the paper row (`paper.py`), the gap, per
    category, example refs."""
    samples = _relabelled(scorer, rows, model)
    everything = _scorer_of(samples)
    by_type = everything.compute(by="instruction_type")
    sizes = everything.group_sizes("instruction_type")
    summary = {
        "by_instruction_type": {t: _plain(by_type[t], sizes[t]) for t in INSTRUCTION_TYPES if t in by_type},
        "by_config": {},
        "breakdown": {},
        "examples": {},
    }
    for config in CONFIGS:
        chosen = [s for s in samples if s["labels"]["config"] == config]
        if not chosen:
            continue
        config_scorer = _scorer_of(chosen)
        summary["by_config"][config] = _plain(config_scorer.compute(), len(config_scorer))
        summary["breakdown"][config] = {
            name: {value: float(m["gIoU"]) for value, m in config_scorer.compute(by=name).items()}
            for name in LABEL_COLUMNS
        }
        ranked = sorted(chosen, key=lambda s: (s["iou"], INSTRUCTION_TYPES.index(s["ref"][0]), s["ref"][1]))
        picks = {"best": ranked[-1], "median": ranked[len(ranked) // 2], "worst": ranked[0]}
        summary["examples"][config] = {
            rank: {"instruction_type": s["ref"][0], "id": s["ref"][1], "iou": float(s["iou"])}
            for rank, s in picks.items()
        }
    if "trps" in summary["by_config"] and "orps" in summary["by_config"]:
        trps, orps = summary["by_config"]["trps"], summary["by_config"]["orps"]
        summary["reasoning_gap"] = {key: orps[key] - trps[key] for key in METRIC_KEYS}
    else:
        summary["reasoning_gap"] = None
    summary["paper"] = paper_row(summary["by_instruction_type"], orps_form)
    return summary


def console_paper_table(summaries: dict, orps_form: str = DEFAULT_ORPS_FORM, provenance: dict | None = None) -> str:
    """The paper's table as text: the published rows, every model's row, and their ranks (official test split
    only; else one line saying why there are none): what `report` and the demo print."""
    models = {model: summary["paper"] for model, summary in summaries.items()}
    return format_paper_table(models, orps_form, published=True, provenance=provenance)


def console_tables(summaries: dict) -> str:
    """Paper-style text tables, one per model, rows per instruction type then TRPS / ORPS / gap."""
    blocks = []
    for model, summary in summaries.items():
        rows = dict(summary["by_instruction_type"])
        rows.update({combined_label(config): metrics for config, metrics in summary["by_config"].items()})
        blocks.append(f"== {model} ==\n" + format_table(rows, row_header="instruction_type"))
        gap = summary["reasoning_gap"]
        if gap:
            blocks.append(
                "ORPS - TRPS gap (points): " + "  ".join(f"{key} {100 * gap[key]:+.2f}" for key in html.METRIC_COLUMNS)
            )
    return "\n".join(blocks)


# ---------------------------------------------------------------- page sections


def _headline_section(summaries: dict) -> str:
    cards = []
    for m, (model, summary) in enumerate(summaries.items()):
        figures = []
        for config in CONFIGS:
            metrics = summary["by_config"].get(config)
            if metrics:
                figures.append(f"<div><b>{html.percent(metrics['gIoU'])}</b><span>{config.upper()} gIoU</span></div>")
        gap = summary["reasoning_gap"]
        if gap:
            figures.append(f"<div><b>{100 * gap['gIoU']:+.2f}</b><span>ORPS − TRPS</span></div>")
        cards.append(
            f'<div class="card model-card" style="--chip:{model_colour(m)}">'
            f'<h3><span class="chip"></span>{html.escape(model)}</h3><div class="big">{"".join(figures)}</div></div>'
        )
    return (
        '<section id="headline"><h2>At a glance</h2>'
        '<p class="lead">gIoU on each task, in percent, and how much easier the part gets once it is named.</p>'
        f'<div class="cards">{"".join(cards)}</div></section>'
    )


def _paper_table_section(summaries: dict, orps_form: str, provenance: dict | None) -> str:
    """The paper's main table: its published methods (grey, as printed), your models inserted (with their
    rank in each column when scored on the official test split, else a line saying why not), and the printed
    Average row; four column groups x gIoU, cIoU, P@50:95, P@50."""
    published = published_results(include_average=False)
    ours = {model: summary["paper"] for model, summary in summaries.items()}
    ranks, reason = ranks_or_reason(ours, provenance)
    best = {}
    for column in PAPER_COLUMNS:
        values = [row[column] for row in published]
        if reason is None:  # yours are compared with the published rows only on the same data
            values += [printed(r[column]) for r in ours.values() if r[column] is not None]
        best[column] = max(values)
    groups = "".join(
        f'<th colspan="{len(METRIC_KEYS)}" class="group">{html.escape(g.title)}</th>' for g in COLUMN_GROUPS
    )
    metrics = "".join(
        f"<th{' class=group-start' if k == 0 else ''}>{html.escape(key)}</th>"
        for _ in COLUMN_GROUPS
        for k, key in enumerate(html.METRIC_COLUMNS)
    )
    rows = []
    for row in published:
        rows.append(
            f'<tr class="published" data-model="{html.escape(row["method"])}" data-row="published">'
            f'<td class="text">{html.escape(row["method"])}</td><td class="text family">{html.escape(row["family"])}</td>'
            + html.published_cells(row, best)
            + "</tr>"
        )
    for m, (model, summary) in enumerate(summaries.items()):
        cells = "".join(
            html.metric_cells(
                {key: summary["paper"][f"{group.key}_{key}"] for key in METRIC_KEYS},
                config=group.key,
                ranks={key: ranks.get(model, {}).get(f"{group.key}_{key}") for key in METRIC_KEYS},
                best_printed={key: best[f"{group.key}_{key}"] for key in METRIC_KEYS},
            )
            for group in COLUMN_GROUPS
        )
        rows.append(
            f'<tr class="yours" data-model="{html.escape(model)}" data-row="paper"><td class="text" style="--chip:{model_colour(m)}">'
            f'<span class="chip"></span>{html.escape(model)}</td><td class="text family">yours</td>{cells}</tr>'
        )
    average = published_results()[-1]
    rows.append(
        '<tr class="published average" data-model="Average" data-row="published-average">'
        '<td class="text">Average (as printed)</td><td class="text family"></td>'
        + html.published_cells(average)
        + "</tr>"
    )
    if reason is None:
        ranking = (
            "Beside each of your numbers: its rank among the published methods and your models (ties share a rank)."
        )
    else:
        ranking = f'</p><p class="lead" id="not-ranked"><b>{html.escape(not_ranked_line(reason))}</b>'
    return (
        '<section id="paper"><h2>Main results, as in the paper</h2>'
        '<p class="lead">The paper\'s table (grey: its 10 zero-shot methods on the 600-entry test split, as printed) with '
        f"your models inserted; percentages. {ranking} The best value per column is in green.</p>"
        f'<table id="paper-table" class="wide"><thead><tr><th rowspan="2" class="text">Method</th>'
        f'<th rowspan="2" class="text">Family</th>{groups}</tr>'
        f"<tr>{metrics}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p class="note">{html.escape(orps_form_note(orps_form))}. Published: {html.escape(PUBLISHED_SOURCE)}; '
        "its Average row is kept as printed (it differs from the mean of the rows in four cells).</p>"
        f"{_published_chart(summaries)}</section>"
    )


def _published_chart(summaries: dict) -> str:
    png = published_chart_png({model: summary["paper"] for model, summary in summaries.items()}, list(summaries))
    return f'<div class="figure"><img id="chart-published" alt="gIoU against the published methods" src="{html.data_uri(png)}"></div>'


def _results_table_section(summaries: dict) -> str:
    kinds = [t for t in INSTRUCTION_TYPES if any(t in s["by_instruction_type"] for s in summaries.values())]
    configs = [c for c in CONFIGS if any(c in s["by_config"] for s in summaries.values())]

    def best_of(pick):
        found = [pick(s) for s in summaries.values() if pick(s)]
        if len(found) < 2:
            return None
        # A column where every model ties has no winner to mark.
        return {key: max(m[key] for m in found) for key in METRIC_KEYS if len({m[key] for m in found}) > 1}

    best_type = {t: best_of(lambda s, t=t: s["by_instruction_type"].get(t)) for t in kinds}
    best_config = {c: best_of(lambda s, c=c: s["by_config"].get(c)) for c in configs}
    body = []
    for m, (model, summary) in enumerate(summaries.items()):
        body.append(
            f'<tr class="model-row" data-model="{html.escape(model)}"><td colspan="7" style="--chip:{model_colour(m)}">'
            f'<span class="chip"></span>{html.escape(model)}</td></tr>'
        )
        for config in configs:
            for kind in CONFIGS[config]:
                if kind in summary["by_instruction_type"]:
                    body.append(
                        f'<tr data-model="{html.escape(model)}" data-row="{kind}"><td class="text"></td>'
                        f'<td class="text">{kind}</td>'
                        + html.metric_cells(summary["by_instruction_type"][kind], best_type[kind], with_count=True)
                        + "</tr>"
                    )
            if config in summary["by_config"]:
                body.append(
                    f'<tr class="subtotal" data-model="{html.escape(model)}" data-row="{config}"><td class="text"></td>'
                    f'<td class="text">{combined_label(config)}</td>'
                    f"{html.metric_cells(summary['by_config'][config], best_config[config], with_count=True)}</tr>"
                )
    return (
        '<section id="results"><h2>Results by instruction type</h2>'
        '<p class="lead">Percentages, columns in the paper\'s order; the best model per row is in green.</p>'
        f'<table id="results-table"><thead>{html.header_cells("Model", "Instruction type", with_count=True)}</thead>'
        f"<tbody>{''.join(body)}</tbody></table></section>"
    )


def _gap_section(summaries: dict) -> str:
    if not any(summary["reasoning_gap"] for summary in summaries.values()):
        return ""  # it needs both TRPS and ORPS rows
    rows = []
    for m, (model, summary) in enumerate(summaries.items()):
        rows.append(
            f'<tr data-model="{html.escape(model)}" data-row="gap"><td style="--chip:{model_colour(m)}">'
            f'<span class="chip"></span>{html.escape(model)}</td>{html.gap_cells(summary["reasoning_gap"])}</tr>'
        )
    return (
        '<section id="gap"><h2>Reasoning gap: ORPS − TRPS</h2>'
        '<p class="lead">Percentage points gained when the instruction names the part instead of the task. '
        "A large positive gap means the model finds named parts but cannot reason from the task to the part.</p>"
        f'<table id="gap-table"><thead>{html.header_cells("Model")}</thead><tbody>{"".join(rows)}</tbody></table>'
        "</section>"
    )


def _charts_section(summaries: dict, rows: RowIndex, figures_dir: str | None) -> str:
    models = list(summaries)
    configs = [c for c in CONFIGS if any(c in s["breakdown"] for s in summaries.values())]
    blocks = []
    for name in LABEL_COLUMNS:
        entries = {}
        for kind, sample in rows:
            entries.setdefault(rows.labels((kind, sample))[name], set()).add(sample)
        counts = {value: len(ids) for value, ids in entries.items()}
        panels = {
            CONFIG_TITLES[c]: {m: summaries[m]["breakdown"].get(c, {}).get(name, {}) for m in models} for c in configs
        }
        png = bar_chart_png(f"gIoU per {name}", panels, models, counts)
        if figures_dir:
            with open(os.path.join(figures_dir, f"giou_per_{name}.png"), "wb") as f:
                f.write(png)
        blocks.append(
            f'<div class="figure"><img id="chart-{name}" alt="gIoU per {name}" src="{html.data_uri(png)}"></div>'
        )
    return (
        '<section id="breakdown"><h2>gIoU per object, part, affordance and action</h2>'
        '<p class="lead">Each category lists its number of annotated parts; best categories on top.</p>'
        f"{''.join(blocks)}</section>"
    )


def _examples_section(summaries: dict, predictions: dict, rows: RowIndex, max_side: int) -> str:
    legend = (
        '<p class="lead legend"><span><i style="background:var(--truth)"></i>ground truth</span>'
        '<span><i style="background:var(--pred)"></i>prediction (truth outlined in green)</span></p>'
    )
    blocks = []
    jobs = [(m, c) for m, s in summaries.items() for c in s["examples"]]
    for model, config in tqdm(jobs, desc="report examples", leave=False, disable=None):  # none in a log
        cards = []
        for rank in EXAMPLE_RANKS:
            pick = summaries[model]["examples"][config][rank]
            ref = (pick["instruction_type"], pick["id"])
            row = rows.row(ref)
            image, truth = row["image"], np.asarray(row["mask"], dtype=bool)
            prediction = read_prediction(predictions[model], *ref, shape=truth.shape)
            panels = overlay_pngs(image, truth, prediction, max_side=max_side)
            figures = "".join(
                f'<figure><img alt="{caption}" src="{html.data_uri(png)}"><figcaption>{caption}</figcaption></figure>'
                for caption, png in zip(("image", "truth", "prediction"), panels)
            )
            cards.append(
                f'<div class="example" data-rank="{rank}"><span class="tag {rank}">{rank}</span>'
                f'<span class="iou">IoU {html.percent(pick["iou"])}</span>'
                f"<blockquote>“{html.escape(row['instruction'])}”</blockquote>"
                f'<div class="meta">{html.escape(ref[0])} · {html.escape(row["object"])} → '
                f"{html.escape(row['part'])} · {html.escape(ref[1])}</div>"
                f'<div class="panels">{figures}</div></div>'
            )
        blocks.append(
            f'<div class="examples" data-model="{html.escape(model)}" data-config="{config}">'
            f"<h3>{html.escape(model)} · {CONFIG_TITLES[config]}</h3>"
            f'<div class="grid">{"".join(cards)}</div></div>'
        )
    return f'<section id="examples"><h2>Best, median and worst samples</h2>{legend}{"".join(blocks)}</section>'


# ---------------------------------------------------------------- entry points


def write_report(
    output_dir: str,
    scorers: dict,
    predictions: dict,
    datasets,
    *,
    title: str = "InstructPart results",
    subtitle: str = "",
    example_size: int = 280,
    save_figures: bool = False,
    orps_form: str = DEFAULT_ORPS_FORM,
    provenance: dict | None = None,
) -> str:
    """Write `report.html` and `report.json` into `output_dir`; return the path of the page.

    scorers: model name -> `StreamingScorer` whose samples are keyed `<instruction_type>/<id>`
        (`instructpart_dataset.schema.sample_key`, as `score_predictions` and `pisa_model.evaluate` key them);
        the labels come from `datasets`.
    predictions: model name -> folder of `<instruction_type>/<id>.png` (the example overlays read them).
    datasets: the scored rows (one `load_instructpart` dataset per config), for images, masks, instructions.
    save_figures: also write each bar chart as `giou_per_<category>.png` beside the page.
    orps_form: the instruction types of the paper table's ORPS columns (`paper.py`), recorded in report.json.
    provenance: where the numbers came from (`provenance.provenance`), printed in the footer and kept in report.json.
    """
    if not scorers:
        raise ValueError("no models to report")
    missing = [m for m in scorers if m not in predictions]
    if missing:
        raise ValueError(f"no predictions folder for model(s) {', '.join(map(repr, missing))}")
    rows = RowIndex(datasets)
    check_orps_form(orps_form)
    summaries = {model: summarise(scorer, rows, model, orps_form) for model, scorer in scorers.items()}
    os.makedirs(output_dir, exist_ok=True)
    body = "\n".join(
        [
            _headline_section(summaries),
            _paper_table_section(summaries, orps_form, provenance),
            _results_table_section(summaries),
            _gap_section(summaries),
            _charts_section(summaries, rows, output_dir if save_figures else None),
            _examples_section(summaries, predictions, rows, example_size),
        ]
    )
    entries = len({sample for _, sample in rows})
    plural = "s" if len(summaries) != 1 else ""
    counts = f"{entries} annotated parts · {len(list(rows))} instruction rows · {len(summaries)} model{plural}"
    subtitle = f"{subtitle} · {counts}" if subtitle else counts
    html_path = os.path.join(output_dir, "report.html")
    numbers = {"models": summaries, "orps_form": orps_form}
    reason = ranks_or_reason({model: summary["paper"] for model, summary in summaries.items()}, provenance)[1]
    if reason is not None:
        numbers["not_ranked"] = reason
    if provenance is not None:
        numbers["provenance"] = provenance
    write_json_atomic(os.path.join(output_dir, "report.json"), numbers, indent=1)
    write_text_atomic(html_path, html.page(title, subtitle, body, format_provenance(provenance)))
    return html_path


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, help="a release folder or an exported Hub dataset folder")
    parser.add_argument("--split", default="test", help=f"one of {', '.join(SPLITS)}")
    parser.add_argument(
        "--config", default=",".join(CONFIGS), help="the configs the folders hold, comma-separated (default trps,orps)"
    )
    add_orps_form_argument(parser)
    parser.add_argument(
        "--predictions",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a model's predictions folder (<instruction_type>/<id>.png); repeat for each model",
    )
    parser.add_argument("--out", required=True, help="folder for report.html and report.json")
    parser.add_argument("--title", default="InstructPart results")


def run_report(args: argparse.Namespace, prog: str) -> str:
    """`python -m instructpart_metric report`: score each folder on the configs, write the page; its path. `prog`
    is the command's program name, recorded in the provenance's command line (the CLI passes its own)."""
    from instructpart_dataset import load_instructpart

    from .results import parse_configs

    configs = parse_configs(args.config)
    predictions = {}
    for item in args.predictions:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--predictions {item!r}: expected NAME=DIR")
        predictions[name] = folder
    by_config = {c: load_instructpart(args.data_dir, config=c, split=args.split) for c in configs}
    datasets = list(by_config.values())
    scorers = {}
    for name, folder in predictions.items():
        try:
            scorers[name] = score_predictions(folder, datasets).scorer
        except FileNotFoundError as error:
            hint = f" (scoring {','.join(configs)}; pass --config for the configs the folder holds)"
            raise FileNotFoundError(f"{error}{hint if len(configs) > 1 else ''}") from None
    record = provenance(
        command_line(prog, getattr(args, "argv", None)),
        args.orps_form,
        dataset_identity(args.data_dir, args.split, by_config),
        predictions=predictions,
        evaluated={name: found for name, folder in predictions.items() if (found := evaluated_by(folder))},
    )
    return write_report(
        args.out,
        scorers,
        predictions,
        datasets,
        title=args.title,
        subtitle=f"{args.data_dir} · split {args.split}",
        orps_form=args.orps_form,
        provenance=record,
    )
