"""The report's pictures as PNG bytes: gIoU bar charts (matplotlib, Agg) and mask overlays (PIL)."""

import io

import numpy as np
from PIL import Image

# One colour per model, in the order the models are given (colour-blind-safe Okabe-Ito hues).
MODEL_COLOURS = ("#9aa3ad", "#e69f00", "#0072b2", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#f0e442")
TRUTH_COLOUR = (0, 200, 120)
PREDICTION_COLOUR = (255, 120, 0)


def model_colour(index: int) -> str:
    return MODEL_COLOURS[index % len(MODEL_COLOURS)]


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def bar_chart_png(title: str, panels: dict, model_names: list, counts: dict) -> bytes:
    """Horizontal grouped bars of gIoU (%) per category, one panel per config, one bar per model.

    `panels` maps a panel title ("TRPS") to {model: {category: gIoU in [0, 1]}};
    `counts` maps each category to its number of entries, written beside its name.
    Categories are sorted by their mean gIoU over models and panels, best on top.
    """
    from instructpart_dataset.toolbox.extras import require

    matplotlib = require("matplotlib", "report", "the report's charts")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    categories = sorted(counts)
    means = {}
    for category in categories:
        values = [scores.get(category) for panel in panels.values() for scores in panel.values()]
        values = [v for v in values if v is not None]
        means[category] = float(np.mean(values)) if values else 0.0
    categories.sort(key=lambda c: (-means[c], c))

    n_models = len(model_names)
    bar = 0.8 / max(1, n_models)
    height = max(2.4, 0.16 * len(categories) * max(1, n_models) + 1.4)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(4.6 * len(panels) + 1.6, height),
        sharey=True,
        squeeze=False,
        dpi=110,
        layout="constrained",
    )
    positions = np.arange(len(categories))
    for ax, (panel_title, per_model) in zip(axes[0], panels.items()):
        for m, name in enumerate(model_names):
            scores = per_model.get(name, {})
            values = [100 * scores.get(c, np.nan) for c in categories]
            offsets = positions - 0.4 + bar * (m + 0.5)
            ax.barh(offsets, values, height=bar * 0.92, color=model_colour(m), label=name, zorder=2)
        ax.set_title(panel_title, fontsize=11, fontweight="bold", loc="left")
        ax.set_xlim(0, 100)
        ax.set_xlabel("gIoU (%)")
        ax.grid(axis="x", color="#e3e6ea", zorder=0)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.tick_params(axis="y", length=0)
    axes[0][0].set_yticks(positions)
    axes[0][0].set_yticklabels([f"{c}  ({counts[c]})" for c in categories])
    axes[0][0].invert_yaxis()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper right", ncol=n_models, frameon=False, fontsize=9)
    fig.suptitle(title, x=0.01, ha="left", fontsize=12, fontweight="bold")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _contour(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of `mask` within `width` pixels of its border."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def _tint(pixels: np.ndarray, mask: np.ndarray, colour, alpha: float) -> np.ndarray:
    out = pixels.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return out


def overlay_pngs(image: Image.Image, truth: np.ndarray, prediction: np.ndarray, max_side: int = 280):
    """Three PNGs at most `max_side` pixels on a side: the image, the truth over it, the prediction over it.

    The prediction panel also outlines the truth, so misses and spills show at a glance.
    """
    if truth.shape != prediction.shape or truth.shape != (image.height, image.width):
        raise ValueError(
            f"image {image.width}x{image.height}, truth {truth.shape[::-1]} and prediction "
            f"{prediction.shape[::-1]} differ in size"
        )
    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    picture = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR))

    def small(mask):
        return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127

    truth_small, prediction_small = small(truth), small(prediction)
    dimmed = picture.astype(np.float32) * 0.55 + 255 * 0.1  # a dimmed copy makes the tints stand out
    truth_panel = _tint(dimmed, truth_small, TRUTH_COLOUR, 0.6)
    truth_panel[_contour(truth_small)] = TRUTH_COLOUR
    prediction_panel = _tint(dimmed, prediction_small, PREDICTION_COLOUR, 0.6)
    prediction_panel[_contour(prediction_small)] = PREDICTION_COLOUR
    prediction_panel[_contour(truth_small)] = TRUTH_COLOUR
    return tuple(
        _png_bytes(Image.fromarray(np.clip(p, 0, 255).astype(np.uint8), "RGB"))
        for p in (picture, truth_panel, prediction_panel)
    )


PUBLISHED_COLOUR = "#c3c8cf"


def published_chart_png(models: dict, model_names: list, metric: str = "gIoU") -> bytes:
    """One panel per column group of the paper's table: `metric` of each published method (grey) and of
    each of your models (its colour, labelled), best on top, values written at the bar ends.

    `models` maps a model name to its `paper.paper_row` (fractions); a model without the group is left out.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .paper import COLUMN_GROUPS, printed, published_results

    published = published_results(include_average=False)
    fig, axes = plt.subplots(
        1, len(COLUMN_GROUPS), figsize=(15, 0.3 * (len(published) + len(models)) + 1.6), dpi=110, layout="constrained"
    )
    for ax, group in zip(axes, COLUMN_GROUPS):
        column = f"{group.key}_{metric}"
        bars = [(row["method"], row[column], PUBLISHED_COLOUR, False) for row in published]
        for m, name in enumerate(model_names):
            if models[name].get(column) is not None:
                bars.append((name, printed(models[name][column]), model_colour(m), True))
        bars.sort(key=lambda bar: -bar[1])
        positions = np.arange(len(bars))
        # Yours are outlined as well as coloured: the first model colour is a grey too.
        ax.barh(
            positions,
            [b[1] for b in bars],
            color=[b[2] for b in bars],
            edgecolor=["#1d2330" if b[3] else "none" for b in bars],
            linewidth=1.2,
            height=0.75,
            zorder=2,
        )
        ax.set_yticks(positions)
        ax.set_yticklabels([b[0] for b in bars], fontsize=8)
        for tick, bar in zip(ax.get_yticklabels(), bars):
            if bar[3]:
                tick.set_fontweight("bold")
        for position, bar in zip(positions, bars):
            ax.text(bar[1] + 0.8, position, f"{bar[1]:.2f}", va="center", fontsize=7, color="#1d2330")
        ax.invert_yaxis()
        ax.set_xlim(0, max(100 * 0.5, max(b[1] for b in bars) * 1.2))
        ax.set_title(group.title, fontsize=10, fontweight="bold", loc="left")
        ax.set_xlabel(f"{metric} (%)", fontsize=8)
        ax.grid(axis="x", color="#e3e6ea", zorder=0)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.tick_params(axis="y", length=0)
    fig.suptitle(
        f"{metric}: your models (coloured) among the paper's published methods (grey)",
        x=0.01,
        ha="left",
        fontsize=11,
        fontweight="bold",
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
