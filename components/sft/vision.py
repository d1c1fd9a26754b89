"""Vision-tower pretraining: teach a from-scratch tower to see before the language model reads it.

Why: the tiny profile builds its Qwen2.5-VL from scratch, so its vision tower is random. Learning to
see only through the language model's answer tokens is too slow for a CPU budget — measured on 2
cores (issue 12), 400 steps of batch 32 on freshly drawn search-free images, the answer loss on the
model's turn, left the random tower at chance (20 %: colour 12, count 16, shape 36, position 16 %).
A real run starts from a pretrained vision encoder; this stage is its analogue: the tower alone,
with one linear classifier per question kind (the dominant colour, how many shapes, which shape,
where it is) on its merged patch tokens, trained on images the world's own generator draws
(:func:`components.world.visual.make_visual`, a new image every time, answers known), AdamW, ~0.15 s
a step at batch 64. The classifiers are thrown away after; the tower keeps what it learnt, and the
SFT step then only has to learn to read it. Measured the same way: 600 tower steps (~90 s) reach
held-out colour 100, count 61, shape 92, position 100 %, and then 400 steps of the answer loss
reach 74 % (colour 82, count 68, shape 98, position 46 %) where the random tower stays at 20 %.

Held-out accuracy of the classifiers (fresh images never trained on) is logged as
``vision_pretrain/acc_<kind>``: the stage says whether the tower learnt to see.

Import-only: ``vision_pretrain(model, processor, VisionPretrainConfig(steps=600))``.
Tests: ``pytest tests/unit/sft/test_vision.py``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from components.sft.pretrain import train_stage
from components.world.visual import COLOURS, POSITIONS, SHAPES, VISUAL_KINDS, make_visual

log = logging.getLogger(__name__)

CLASSES: dict[str, list[str]] = {"colour": list(COLOURS), "count": [str(n) for n in range(1, 8)],
                                 "shape": list(SHAPES), "position": list(POSITIONS)}


@dataclass
class VisionPretrainConfig:
    steps: int
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    log_every: int = 100
    eval_images: int = 100  # held-out images per kind for the logged accuracy


def vision_tower(model: Any) -> torch.nn.Module:
    """The vision tower of a Qwen2.5-VL model (transformers 5 keeps it at ``model.model.visual``)."""
    tower = getattr(getattr(model, "model", None), "visual", None) or getattr(model, "visual", None)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no vision tower (model.visual): vision pretraining "
                         "needs a Qwen2.5-VL-style model")
    return tower


def draw(kind: str, rng: random.Random) -> tuple[Any, int]:
    """One fresh image of ``kind`` and its class index."""
    image, _, answers, _ = make_visual(kind, rng, verify=False)
    return image, CLASSES[kind].index(answers[0])


class _Probe(torch.nn.Module):
    """The tower plus one linear classifier per kind over its flattened merged tokens."""

    def __init__(self, tower: torch.nn.Module, image_processor: Any, n_tokens: int, dim: int):
        super().__init__()
        self.tower, self.image_processor, self.n_tokens = tower, image_processor, n_tokens
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(n_tokens * dim, len(v)) for k, v in CLASSES.items()})

    def features(self, images: list[Any]) -> torch.Tensor:
        enc = self.image_processor(images=images, return_tensors="pt")
        device = next(self.tower.parameters()).device
        out = self.tower(enc["pixel_values"].to(device), grid_thw=enc["image_grid_thw"].to(device))
        tokens = out.pooler_output if hasattr(out, "pooler_output") else out  # merged: (images * n, dim)
        return tokens.reshape(len(images), -1)

    def forward(self, images: list[Any], kinds: list[str], labels: torch.Tensor) -> SimpleNamespace:
        feats = self.features(images)
        loss = feats.new_zeros(())
        for kind in set(kinds):
            rows = [i for i, k in enumerate(kinds) if k == kind]
            loss = loss + torch.nn.functional.cross_entropy(self.heads[kind](feats[rows]), labels[rows].to(feats.device),
                                                            reduction="sum")
        return SimpleNamespace(loss=loss / len(kinds))

    @torch.no_grad()
    def accuracy(self, held_out: dict[str, list[tuple[Any, int]]]) -> dict[str, float]:
        was = self.training
        self.eval()
        out = {}
        for kind, items in held_out.items():
            pred = self.heads[kind](self.features([im for im, _ in items])).argmax(-1).cpu()
            out[kind] = float((pred == torch.tensor([y for _, y in items])).float().mean())
        self.train(was)
        return out


def vision_pretrain(model: Any, processor: Any, config: VisionPretrainConfig,
                    on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train ``model``'s vision tower in place; return the held-out accuracy per kind (and ``all``)."""
    tower = vision_tower(model)
    image_processor = processor.image_processor
    held_rng = random.Random(10_000 + config.seed)  # held-out images: a stream the training never draws from
    held_out = {k: [draw(k, held_rng) for _ in range(config.eval_images)] for k in VISUAL_KINDS}
    sample = held_out[VISUAL_KINDS[0]][0][0]
    grid = image_processor(images=[sample], return_tensors="pt")["image_grid_thw"][0]
    merge = getattr(image_processor, "merge_size", 2)
    n_tokens = int(grid.prod()) // (merge * merge)
    dim = int(getattr(tower.config, "out_hidden_size", 0) or tower.merger.mlp[-1].out_features)
    probe = _Probe(tower, image_processor, n_tokens, dim)
    before = probe.accuracy(held_out)
    for p in tower.parameters():
        p.requires_grad_(True)
    rng = random.Random(config.seed)

    def batch(step: int) -> dict[str, Any]:
        kinds = [VISUAL_KINDS[(step * config.batch_size + i) % len(VISUAL_KINDS)] for i in range(config.batch_size)]
        drawn = [draw(k, rng) for k in kinds]
        return {"images": [im for im, _ in drawn], "kinds": kinds, "labels": torch.tensor([y for _, y in drawn])}

    def logged(step: int, metrics: dict[str, float]) -> None:
        if on_log is not None:
            on_log(step, metrics)

    train_stage(probe, "vision_pretrain", config.steps, config.learning_rate, config.log_every, batch, logged)
    after = probe.accuracy(held_out)
    after["all"] = sum(after.values()) / len(after)
    log.info("vision pretraining: held-out accuracy %s (before: %s; chance ~%s)",
             ", ".join(f"{k} {v:.0%}" for k, v in after.items()),
             ", ".join(f"{k} {v:.0%}" for k, v in before.items()),
             ", ".join(f"{k} {1 / len(v):.0%}" for k, v in CLASSES.items()))
    if on_log is not None:
        on_log(config.steps, {f"vision_pretrain/acc_{k}": v for k, v in after.items()})
    model.eval()
    return after
