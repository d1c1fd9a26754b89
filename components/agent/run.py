"""Run the agent loop over a VQA set and write trajectories (JSONL) + images: ``dmms agent run``.

Why: the building block datagen and evaluation call — one VQA set (docs/design.md §5) in, one folder
out: ``trajectories.jsonl`` (one :class:`Trajectory` a line, in the order of the set) and
``images/<sha256>.png`` (input images and the crops the tool-server searched, named by the content
hash the records refer to). Written into a temporary folder and renamed: never half-written.

    dmms agent run --model .dmms/models/tiny --vqa world/vqa/test --out runs/t1 [--tools URL]
    dmms agent run --model http://vllm:8000/v1 --vqa ... --out ...   # an OpenAI-compatible server
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.agent.loop import AgentLoop, LoopResult, Sample
from components.common.settings import Settings

log = logging.getLogger(__name__)


def read_samples(vqa: Path, limit: int | None = None) -> list[Sample]:
    """The samples of a VQA set folder (or its vqa.jsonl), images read as bytes."""
    from components.agent.vqa import read_vqa

    vqa = Path(vqa)
    items = read_vqa(vqa)
    root = vqa if vqa.is_dir() else vqa.parent
    items = items[:limit] if limit else items
    return [Sample(id=i.id, question=i.question, answers=list(i.answers), image=(root / i.image).read_bytes())
            for i in items]


def make_generator(model: str, settings: Settings) -> Any:
    """``http(s)://…`` → the openai generator (endpoint settings from DMMS_TEACHER__*, this base URL);
    anything else → the local generator over that checkpoint (the tiny profile builds it if missing)."""
    if model.startswith(("http://", "https://")):
        from components.agent.generators.openai import OpenAIGenerator

        endpoint = settings.teacher.model_copy(update={"base_url": model})
        return OpenAIGenerator(endpoint, concurrency=settings.agent.concurrency)
    from components.agent.generators.local import LocalGenerator
    from components.agent.models import ensure_model

    if model == settings.model.name_or_path:
        model = ensure_model(settings)
    return LocalGenerator.load(model, settings.model)


def write_result(result: LoopResult, out: Path) -> Path:
    """Write ``trajectories.jsonl`` and ``images/`` to ``out`` (refuses a non-empty folder)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty: choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "images").mkdir()
        for sha, data in result.images.items():
            (staging / "images" / f"{sha}.png").write_bytes(data)
        with (staging / "trajectories.jsonl").open("w", encoding="utf-8") as f:
            for t in result.trajectories:
                f.write(t.model_dump_json() + "\n")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


async def run_vqa(model: str, vqa: Path, out: Path, settings: Settings, *, tools_url: str | None = None,
                  limit: int | None = None, processor: Any | None = None) -> dict[str, Any]:
    """Run the loop over ``vqa`` with ``model`` and the tool-server; write ``out``; return a summary."""
    from components.search.client import ToolClient

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty: choose another --out")
    samples = read_samples(vqa, limit)
    if tools_url:
        settings = settings.model_copy(update={"tools": settings.tools.model_copy(update={"url": tools_url})})
    generator = make_generator(model, settings)
    try:
        async with ToolClient.from_settings(settings) as tools:
            loop = AgentLoop.from_settings(generator, tools, settings)
            if processor is not None:
                loop.processor = processor
            result = await loop.run(samples)
    finally:
        await generator.aclose()
    write_result(result, out)
    ends: dict[str, int] = {}
    for t in result.trajectories:
        ends[str(t.end_reason)] = ends.get(str(t.end_reason), 0) + 1
    summary = {"out": str(out), "trajectories": len(result.trajectories), "images": len(result.images),
               "end_reasons": ends}
    log.info("agent run: %s", json.dumps(summary))
    return summary
