"""Evaluation reports: the Table 1 layout (markdown + CSV) and a self-contained HTML report.

Why self-contained: the HTML report is logged as ONE MLflow artifact and opened from the MLflow UI
or a laptop, with no server: every image (input images, searched crops, plots) is inlined as a
``data:`` URI and the page has no external script or style. It is rendered from the Jinja2
template ``templates/report.html.j2`` with autoescaping on (model outputs and web text are
untrusted), one section per sample: image, crops, every turn, every tool result, the verdict.

    write_table(cells, benchmarks, modes, out_dir)     # table.md, table.csv
    write_html(samples, cells, plots, meta, out_dir / "report.html")
"""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image

from components.evaluate.benchmarks import DISPLAY
from components.evaluate.metrics import Cell, accuracy_table, mode_averages
from components.evaluate.records import EvalSample

TEMPLATES = Path(__file__).with_name("templates")
THUMB_PX = 320


def write_table(cells: dict[tuple[str, str], Cell], benchmarks: list[str], modes: list[str],
                out_dir: Path) -> tuple[Path, Path]:
    """``table.md`` and ``table.csv``: rows = modes, columns = benchmarks then Avg (accuracy %, each
    with its 95% bootstrap interval and n)."""
    rows = accuracy_table(cells, benchmarks, modes)
    header = ["Mode", *(DISPLAY.get(b, b) for b in benchmarks), "Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join([str(row["mode"]), *(_fmt_ci(row, b) for b in benchmarks),
                                        _fmt(row["avg"])]) + " |")
    md = out_dir / "table.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = out_dir / "table.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["mode", *(f"{b}{k}" for b in benchmarks for k in ("", "_ci95_lo", "_ci95_hi", "_n")), "avg"])
        for row in rows:
            values = []
            for b in benchmarks:
                ci = row[f"{b}_ci95"] or (None, None)
                values += [row[b], ci[0], ci[1], row[f"{b}_n"]]
            writer.writerow([row["mode"], *values, row["avg"]])
    return md, path


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _fmt_ci(row: dict, bench: str) -> str:
    if row[bench] is None:
        return "–"
    lo, hi = row[f"{bench}_ci95"]
    return f"{row[bench]:.2f} [{lo:.1f}, {hi:.1f}] n={row[f'{bench}_n']}"


def _data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(image: Image.Image) -> str:
    image = image.copy()
    image.thumbnail((THUMB_PX, THUMB_PX))
    return _data_uri(image)


def _sample_view(sample: EvalSample) -> dict[str, Any]:
    """What the template shows for one sample; crops are cut from the input image by their box."""
    view = sample.model_dump()
    view["image_uri"], crops = None, {}
    try:
        with Image.open(sample.image_path) as img:
            image = img.convert("RGB")
    except OSError:
        image = None
    if image is not None:
        view["image_uri"] = _thumb(image)
        for i, turn in enumerate(sample.turns):
            box = turn.crop_box
            if box and len(box) == 4:
                crops[i] = _thumb(image.crop(tuple(int(v) for v in box)))
    view["turn_views"] = [{**t.model_dump(), "crop_uri": crops.get(i)} for i, t in enumerate(sample.turns)]
    return view


def render_html(samples: list[EvalSample], cells: dict[tuple[str, str], Cell], plots: dict[str, Path],
                meta: dict[str, Any], benchmarks: list[str], modes: list[str]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    plot_uris = {}
    for name, path in plots.items():
        with Image.open(path) as img:
            plot_uris[name] = _data_uri(img.convert("RGB"))
    return env.get_template("report.html.j2").render(
        meta=meta, cells=list(cells.values()), averages=mode_averages(cells),
        table=accuracy_table(cells, benchmarks, modes), benchmarks=benchmarks, display=DISPLAY,
        plots=plot_uris, samples=[_sample_view(s) for s in samples])


def write_html(samples: list[EvalSample], cells: dict[tuple[str, str], Cell], plots: dict[str, Path],
               meta: dict[str, Any], benchmarks: list[str], modes: list[str], path: Path) -> Path:
    html = render_html(samples, cells, plots, meta, benchmarks, modes)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)  # never a half-written report
    return path
