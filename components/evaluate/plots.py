"""Evaluation plots as PNG (matplotlib, Agg backend: no display needed).

- ``accuracy_vs_searches``: one point per benchmark × mode; does searching more buy accuracy?
- ``tool_mix``: per benchmark × mode, the share of text / whole-image / crop searches (stacked bars).

    paths = write_plots(cells, out_dir)   # {"accuracy_vs_searches": Path, "tool_mix": Path}
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from components.evaluate.benchmarks import DISPLAY  # noqa: E402
from components.evaluate.metrics import Cell  # noqa: E402

MODE_COLOURS = {"direct": "#7f7f7f", "rag": "#1f77b4", "agent": "#d62728"}


def accuracy_vs_searches(cells: dict[tuple[str, str], Cell], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for (bench, mode), c in cells.items():
        ax.scatter(c.searches_per_question, c.accuracy, color=MODE_COLOURS.get(mode, "#2ca02c"),
                   label=mode, s=40)
        ax.annotate(DISPLAY.get(bench, bench), (c.searches_per_question, c.accuracy), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xlabel("searches per question")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Accuracy vs searches per question")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def tool_mix(cells: dict[tuple[str, str], Cell], path: Path) -> Path:
    keys = list(cells)
    labels = [f"{DISPLAY.get(b, b)}\n{m}" for b, m in keys]
    text = [cells[k].text_share for k in keys]
    image = [cells[k].image_share for k in keys]
    crop = [cells[k].crop_share for k in keys]
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(keys) + 2), 4), dpi=100)
    xs = range(len(keys))
    ax.bar(xs, text, label="text", color="#1f77b4")
    ax.bar(xs, image, bottom=text, label="whole image", color="#ff7f0e")
    ax.bar(xs, crop, bottom=[t + i for t, i in zip(text, image, strict=True)], label="crop", color="#2ca02c")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("share of searches (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Tool mix per benchmark")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# (run label, MLflow metric, y label) of the training curves shown for a trained checkpoint
CURVES = (("sft", "loss", "SFT loss"), ("grpo", "reward", "GRPO reward (mean of the group)"))


def training_curves(histories: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path | None:
    """SFT loss and GRPO reward per step (with ± reward_std) from the training runs' MLflow
    histories ``{"sft": {"loss": [(step, value)]}, "grpo": {"reward": [...], "reward_std": [...]}}``;
    None when there is nothing to draw."""
    panels = [(label, metric, ylabel) for label, metric, ylabel in CURVES if histories.get(label, {}).get(metric)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), dpi=100, squeeze=False)
    for ax, (label, metric, ylabel) in zip(axes[0], panels, strict=True):
        points = sorted(histories[label][metric])
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, color="#1f77b4", lw=1.2)
        std = dict(histories[label].get(f"{metric}_std", []))
        if std and all(x in std for x in xs):
            ax.fill_between(xs, [y - std[x] for x, y in zip(xs, ys, strict=True)],
                            [y + std[x] for x, y in zip(xs, ys, strict=True)], color="#1f77b4", alpha=0.15,
                            label="± std within the step's groups")
            ax.legend(fontsize=7)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def write_plots(cells: dict[tuple[str, str], Cell], out_dir: Path,
                histories: dict[str, dict[str, list[tuple[int, float]]]] | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"accuracy_vs_searches": accuracy_vs_searches(cells, out_dir / "accuracy_vs_searches.png"),
             "tool_mix": tool_mix(cells, out_dir / "tool_mix.png")}
    curves = training_curves(histories or {}, out_dir / "training_curves.png")
    if curves is not None:
        plots["training_curves"] = curves
    return plots
