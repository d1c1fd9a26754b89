"""The HTML report renders in a real browser: headless Chromium screenshots it and dumps its DOM.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped with that reason when
/usr/bin/chromium is missing. The report is built from samples written here: a magenta input image
with a cyan square that a searched crop covers, so the screenshot must show both colours, and the
dumped DOM must hold every turn's text and the verdict.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.evaluate.benchmarks import BenchItem, Benchmark
from components.evaluate.records import EvalSample, TurnRecord
from components.evaluate.run import write_outputs

CHROMIUM = Path("/usr/bin/chromium")
MAGENTA, CYAN = (255, 0, 255), (0, 255, 255)
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium: apt-get install -y chromium")


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    img = Image.new("RGB", (200, 200), MAGENTA)
    img.paste(Image.new("RGB", (60, 60), CYAN), (130, 130))
    img.save(root / "input.png")
    turns = [
        TurnRecord(role="model", action="crop_search", query="the cyan square",
                   text="<reason>The square in the corner matters.</reason><img_search>the cyan square</img_search>"),
        TurnRecord(role="tool", action="crop_search", crop_box=[130, 130, 190, 190], latency_s=0.12,
                   text="The Zorblat monument stands in the city of Quenmar. Completed in 1789."),
        TurnRecord(role="model", action="text_search", query="Zorblat monument architect",
                   text="<reason>Need the architect.</reason><text_search>Zorblat monument architect</text_search>"),
        TurnRecord(role="tool", action="text_search", text="Its architect was Velkin Dra <script>alert(1)</script>."),
        TurnRecord(role="model", action="answer", text="<reason>Found it.</reason><answer>Velkin Dra</answer>"),
    ]
    sample = EvalSample(benchmark="world", mode="agent", item_id="w-1", question="Who designed this monument?",
                        answers=["Velkin Dra"], image_path=str(root / "input.png"), prediction="Velkin Dra",
                        correct=True, judge="rule", judge_detail="exact match", turns=turns, model_turns=3,
                        text_searches=1, crop_searches=1, latency_s=0.5)
    bench = Benchmark(name="world", root=str(root), version="v",
                      items=[BenchItem(id="w-1", image="input.png", question="q", answers=["a"])])
    write_outputs([sample], [bench], ["agent"], {"model": "tiny", "judge": "rule", "run_id": "r1"}, root / "out")
    return root / "out" / "report.html"


def test_report_is_self_contained(report):
    html = report.read_text()
    assert "data:image/png;base64," in html
    assert "src=\"http" not in html and "<link" not in html  # nothing fetched from elsewhere
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html  # autoescaped


def test_screenshot_shows_the_images(report, tmp_path):
    png = tmp_path / "shot.png"
    proc = _chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,1600", report.as_uri())
    assert png.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 50  # not blank: text, tables, plots, images
    near = lambda c: (np.abs(pixels - np.array(c)).sum(axis=1) < 30).sum()  # noqa: E731
    assert near(MAGENTA) > 2000  # the inlined input image is rendered
    assert near(CYAN) > 1500  # its cyan square, in the image and as the searched crop


def test_dom_holds_every_turn_and_the_verdict(report, tmp_path):
    proc = _chromium(tmp_path, "--dump-dom", report.as_uri())
    dom = proc.stdout
    assert "Who designed this monument?" in dom
    for text in ("The square in the corner matters.", "Completed in 1789.", "Zorblat monument architect",
                 "Velkin Dra", "Verdict: CORRECT"):
        assert text in dom, text
    assert dom.count('class="turn model"') == 3 and dom.count('class="turn tool"') == 2
    assert dom.count('alt="searched crop"') == 1 and 'alt="input image"' in dom
