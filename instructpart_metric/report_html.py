"""The report page's markup: one self-contained HTML document (styles inline, images as data URIs)."""

import base64
from html import escape

from instructpart_metric import METRIC_KEYS as METRIC_COLUMNS  # the paper's column order

from .paper import ordinal

STYLE = """
:root { --ink:#1d2330; --muted:#5d6675; --line:#e3e6ea; --paper:#f6f7f9; --card:#fff;
        --truth:#00c878; --pred:#ff7800; --good:#0a7d4f; --bad:#b3261e; }
* { box-sizing: border-box; }
body { margin:0; background:var(--paper); color:var(--ink);
       font: 15px/1.5 "Inter","Helvetica Neue","Liberation Sans","DejaVu Sans",Arial,sans-serif; }
header { background:linear-gradient(120deg,#14213d 0%,#1f4e79 60%,#2a7f9e 100%); color:#fff; padding:36px 48px 30px; }
header h1 { margin:0 0 6px; font-size:30px; letter-spacing:-.01em; }
header p { margin:0; opacity:.85; }
main { max-width:1240px; margin:0 auto; padding:8px 32px 48px; }
section { margin-top:34px; }
h2 { font-size:20px; margin:0 0 4px; }
.lead { color:var(--muted); margin:0 0 14px; }
.cards { display:flex; flex-wrap:wrap; gap:16px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:16px 18px;
        box-shadow:0 1px 2px rgba(20,30,50,.05); }
.model-card { flex:1 1 220px; border-top:5px solid var(--chip); }
.model-card h3 { margin:0 0 10px; font-size:16px; }
.big { display:flex; gap:22px; }
.big div { display:flex; flex-direction:column; }
.big b { font-size:28px; font-variant-numeric:tabular-nums; line-height:1.1; }
.big span { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.05em; }
.chip { display:inline-block; width:11px; height:11px; border-radius:3px; background:var(--chip); margin-right:7px; }
table { border-collapse:collapse; background:var(--card); border:1px solid var(--line); border-radius:12px;
        overflow:hidden; font-variant-numeric:tabular-nums; min-width:640px; }
th, td { padding:7px 14px; text-align:right; border-bottom:1px solid var(--line); }
th { background:#eef1f5; font-size:12px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); }
th:first-child, td:first-child, th.text, td.text { text-align:left; }
tr.model-row td { background:#fafbfc; font-weight:600; border-top:2px solid var(--line); }
tr.subtotal td { font-weight:600; background:#f7f9fb; }
td.best { font-weight:700; color:var(--good); }
td.count { color:var(--muted); font-size:13px; }
table.wide { width:100%; }
th.group { text-align:center; border-left:2px solid var(--line); color:var(--ink); font-size:13px; }
td.group-start, th.group-start { border-left:2px solid var(--line); }
#paper-table td { font-size:15px; }
#paper-table thead tr + tr th { text-align:right; }
td.gap-neg { color:var(--bad); }
td.gap-pos { color:var(--good); }
.figure { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:12px; margin-bottom:16px; }
.figure img { max-width:100%; display:block; margin:0 auto; }
.examples { margin-bottom:22px; }
.examples h3 { margin:18px 0 8px; font-size:16px; }
.grid { display:grid; grid-template-columns:repeat(3, minmax(0, 1fr)); gap:14px; }
.example { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:12px; }
.example .tag { display:inline-block; font-size:11px; font-weight:700; text-transform:uppercase; letter-spacing:.06em;
                padding:2px 8px; border-radius:999px; color:#fff; background:var(--muted); }
.example .tag.best { background:var(--good); } .example .tag.worst { background:var(--bad); }
.example .iou { float:right; font-weight:700; font-variant-numeric:tabular-nums; }
.example blockquote { margin:8px 0; font-style:italic; min-height:3em; }
.example .meta { color:var(--muted); font-size:12px; margin-bottom:8px; word-break:break-all; }
.panels { display:grid; grid-template-columns:repeat(3, 1fr); gap:6px; }
.panels figure { margin:0; }
.panels img { width:100%; border-radius:6px; display:block; background:#ddd; }
.panels figcaption { text-align:center; font-size:11px; color:var(--muted); margin-top:3px; }
.legend span { display:inline-block; margin-right:16px; }
.legend i { display:inline-block; width:12px; height:12px; border-radius:3px; vertical-align:-1px; margin-right:5px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:24px; }
footer .provenance { font-family:"DejaVu Sans Mono",monospace; font-size:11px; margin-top:4px; word-break:break-all; }
#paper-table tr.published td { color:#6b7380; background:#f4f5f7; font-size:14px; }
#paper-table tr.published td.best { color:var(--good); }
#paper-table tr.average td { font-style:italic; border-top:2px solid var(--line); }
#paper-table tr.yours td { font-weight:600; background:#fffbea; border-top:2px solid #e6c84f; }
#paper-table td.family { color:var(--muted); font-size:12px; text-transform:uppercase; }
#paper-table .rank { display:block; font-size:10px; font-weight:500; color:var(--muted); }
#paper-table td, #paper-table th { padding:6px 8px; }
.note { color:var(--muted); font-size:12px; margin:6px 0 14px; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def percent(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _is_best(value, key, best, best_printed) -> bool:
    if value is None:
        return False
    if best_printed:  # against published values: compare what the table prints
        return float(percent(value)) == best_printed.get(key)
    return bool(best) and value == best.get(key)


def metric_cells(
    metrics: dict,
    best: dict | None = None,
    with_count: bool = False,
    config: str | None = None,
    ranks: dict | None = None,
    best_printed: dict | None = None,
) -> str:
    """One <td> per metric (and the sample count); `data-value` keeps the exact fraction the table rounds.

    `config` tags the cells (and starts a column group); `ranks` adds "3rd/11" badges (`paper.rank_against_published`);
    `best_printed` marks the best cells by their printed percentage (when the best may be a published value)."""
    cells = []
    scope = f' data-config="{escape(config)}"' if config else ""
    for k, key in enumerate(METRIC_COLUMNS):
        value = metrics.get(key) if metrics else None
        classes = (["best"] if _is_best(value, key, best, best_printed) else []) + (
            ["group-start"] if config and k == 0 else []
        )
        css = f' class="{" ".join(classes)}"' if classes else ""
        exact = "" if value is None else f' data-value="{value!r}"'
        found = (ranks or {}).get(key)
        badge = ""
        if found:
            tie = f" (tied with {', '.join(found['tied_with'])})" if found["tied_with"] else ""
            title = f"rank {ordinal(found['rank'])} of {found['of']}{tie}"
            badge = f'<span class="rank" title="{escape(title)}">{ordinal(found["rank"])}/{found["of"]}</span>'
        cells.append(f'<td data-metric="{escape(key)}"{scope}{exact}{css}>{percent(value)}{badge}</td>')
    if with_count:
        cells.append(f'<td class="count">{metrics.get("num_samples", "")}</td>')
    return "".join(cells)


def published_cells(row: dict, best: dict | None = None) -> str:
    """The 16 cells of a published row (percentages as printed; `data-published` keeps the printed value)."""
    from .paper import COLUMN_GROUPS

    cells = []
    for group in COLUMN_GROUPS:
        for k, key in enumerate(METRIC_COLUMNS):
            value = row[f"{group.key}_{key}"]
            classes = (["best"] if best and value == best[f"{group.key}_{key}"] else []) + (
                ["group-start"] if k == 0 else []
            )
            cells.append(
                f'<td data-metric="{escape(key)}" data-group="{group.key}" data-published="{value:.2f}" '
                f'class="{" ".join(classes)}">{value:.2f}</td>'
            )
    return "".join(cells)


def gap_cells(gap: dict) -> str:
    cells = []
    for key in METRIC_COLUMNS:
        value = gap.get(key) if gap else None
        if value is None:
            cells.append(f'<td data-metric="{escape(key)}">—</td>')
            continue
        css = "gap-neg" if value < -5e-5 else "gap-pos" if value > 5e-5 else "gap-zero"
        cells.append(f'<td data-metric="{escape(key)}" data-value="{value!r}" class="{css}">{100 * value:+.2f}</td>')
    return "".join(cells)


def header_cells(first: str, second: str | None = None, with_count: bool = False) -> str:
    heads = [f'<th class="text">{escape(first)}</th>']
    if second:
        heads.append(f'<th class="text">{escape(second)}</th>')
    heads += [f"<th>{escape(k)}</th>" for k in METRIC_COLUMNS]
    if with_count:
        heads.append("<th>N</th>")
    return "<tr>" + "".join(heads) + "</tr>"


def page(title: str, subtitle: str, body: str, provenance_lines: list | None = None) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<header><h1>{escape(title)}</h1><p>{escape(subtitle)}</p></header>\n"
        f"<main>\n{body}\n</main>\n"
        "<footer>Metrics: gIoU = mean per-sample IoU; cIoU = ΣI / ΣU; P@50 = share of samples with IoU ≥ 0.5; "
        "P@50:95 = the same averaged over thresholds 0.50, 0.55, …, 0.95. All in percent."
        + "".join(f'<div class="provenance">{escape(line)}</div>' for line in provenance_lines or [])
        + "</footer>\n"
        "</body>\n</html>\n"
    )
