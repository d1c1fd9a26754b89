"""Crop search by referring expression through the grounding service, over loopback; and what
happens without one (components/search/grounding_service.py, service.py ``_crop``).

The grounding service runs for real (FastAPI under uvicorn, the tool-server calling it over HTTP),
but behind it stands :class:`ColourGrounder`, not GroundingDINO: no GroundingDINO weights can be
downloaded here. It finds the box of the pixels of a colour named in the phrase ("the red square").
A cluster adds GroundingDINO on a GPU (``dmms tools ground-serve``, manifests/base/grounding) and
real referring expressions.
"""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image, ImageDraw

from components.agent.generators.scripted import ScriptedGenerator
from components.agent.loop import AgentLoop, LoopConfig, Sample
from components.search.client import ToolClient, encode_image
from components.search.grounding_service import create_grounding_app
from tests.fixtures.toolserver import TOKEN, start_toolserver, tool_settings
from tests.support import free_port

HEADERS = {"Authorization": f"Bearer {TOKEN}"}
RED_BOX = [300, 40, 460, 200]


class ColourGrounder:
    """Stand-in for GroundingDINO: the bounding box of the pixels of the colour the phrase names."""

    COLOURS = {"red": (230, 20, 20), "blue": (20, 40, 230)}

    def locate(self, image: Image.Image, phrase: str) -> list[list[float]]:
        colour = next((c for name, c in self.COLOURS.items() if name in phrase.lower()), None)
        if colour is None:
            return []
        px = image.convert("RGB").load()
        hits = [(x, y) for y in range(0, image.height, 2) for x in range(0, image.width, 2)
                if sum(abs(a - b) for a, b in zip(px[x, y], colour, strict=True)) < 60]
        if not hits:
            return []
        xs, ys = [h[0] for h in hits], [h[1] for h in hits]
        return [[min(xs), min(ys), max(xs) + 2, max(ys) + 2]]


def _scene() -> Image.Image:
    img = Image.new("RGB", (512, 512), (235, 235, 235))
    ImageDraw.Draw(img).rectangle(RED_BOX, fill=ColourGrounder.COLOURS["red"])
    return img


@pytest.fixture()
def grounding_url():
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_grounding_app(ColourGrounder()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(10)


def _search(url: str, region: str) -> dict:
    resp = httpx.post(f"{url}/v1/image_search", json={"image_b64": encode_image(_scene()), "region": region},
                      headers=HEADERS, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_referring_expression_is_cropped_through_the_grounding_service(toolserver_corpus, tmp_path,
                                                                         grounding_url):
    _, index, _ = toolserver_corpus
    settings = tool_settings(tmp_path, grounding_url=grounding_url)
    with start_toolserver(settings, index) as (url, _app):
        found = _search(url, "the red square")
    x1, y1, x2, y2 = found["crop_box"]
    assert abs(x1 - RED_BOX[0]) <= 2 and abs(y1 - RED_BOX[1]) <= 2
    assert abs(x2 - RED_BOX[2]) <= 3 and abs(y2 - RED_BOX[3]) <= 3
    assert found["note"] is None
    schema = httpx.get(grounding_url + "/openapi.json", timeout=10).json()
    assert "/v1/ground" in schema["paths"]  # the service documents its API


def test_grounding_service_down_searches_the_whole_image_and_says_so(toolserver_corpus, tmp_path):
    _, index, _ = toolserver_corpus
    settings = tool_settings(tmp_path, grounding_url=f"http://127.0.0.1:{free_port()}", grounding_timeout_s=2.0)
    with start_toolserver(settings, index) as (url, _app):
        found = _search(url, "the red square")
        assert found["crop_box"] is None and found["results"]
        assert "grounding service is unavailable" in found["note"]
        assert found["summary"].startswith("Could not locate 'the red square'")
        # and through the agent loop: the fallback answered, so the one image search is used once
        traj = _run_loop(url, ["<reason>Crop the square.</reason><img_search>the red square</img_search>",
                               "<reason>Done.</reason><answer>red</answer>"])
    assert traj.crop_searches == 1 and "whole image was searched instead" in traj.turns[0].information


def test_a_failed_crop_search_leaves_the_image_search_unused(toolserver_corpus, tmp_path):
    """A box outside the image is refused (422); the model may still search the image once."""
    _, index, _ = toolserver_corpus
    with start_toolserver(tool_settings(tmp_path), index) as (url, _app):
        traj = _run_loop(url, ["<reason>Crop.</reason><img_search>[900, 900, 1000, 1000]</img_search>",
                               "<reason>Whole image then.</reason><img_search><img></img_search>",
                               "<reason>Done.</reason><answer>red</answer>"])
    first, second = traj.turns[0], traj.turns[1]
    assert "The image search was not used up" in first.information
    assert second.action.kind == "image_search" and "already used" not in (second.information or "")
    assert second.tool_result  # the whole-image search ran


def _run_loop(url: str, script: list[str]):
    import asyncio

    turns = iter(script)
    gen = ScriptedGenerator(lambda req: next(turns))
    buf = io.BytesIO()
    _scene().save(buf, format="PNG")

    async def go():
        async with ToolClient(url, TOKEN, retries=0) as tools:
            loop = AgentLoop(gen, tools, LoopConfig(progress=False))
            return (await loop.run([Sample(id="s0", question="What colour is the square?",
                                           image=buf.getvalue())])).trajectories[0]

    return asyncio.run(go())
