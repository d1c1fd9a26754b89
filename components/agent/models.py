"""The ONE way every step loads the policy model: a folder or a hub id, tiny or 7B, same code.

Why: datagen (local generator), SFT, GRPO and evaluation must all load the model with the same
dtype, device, attention implementation and processor image limits, whether it is the tiny random
model of the ``tiny`` profile or ``Qwen/Qwen2.5-VL-7B-Instruct``. They call
:func:`load_model_and_processor`; :func:`ensure_model` builds the tiny model on first use;
:func:`freeze_vision` freezes the vision tower and its merger (SFT trains the language model only,
as in the paper).

Use::

    settings = load_settings()
    path = ensure_model(settings)
    model, processor = load_model_and_processor(path, settings.model)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from components.common.settings import ModelSettings, Settings, env_name

log = logging.getLogger(__name__)

# sdpa runs on CPU and GPU for Qwen2.5-VL (text and vision tower) and needs no extra package.
ATTN_IMPLEMENTATION = "sdpa"
_VISION_MODULES = ("visual",)  # Qwen2.5-VL: ``model.visual`` holds the patch embed, blocks and merger


def _torch_dtype(name: str) -> torch.dtype | str:
    return "auto" if name == "auto" else getattr(torch, name)


def load_model_and_processor(name_or_path: str, model_settings: ModelSettings):
    """Load ``(model, processor)`` with ``AutoModelForImageTextToText`` / ``AutoProcessor``.

    dtype, device and the processor's ``max_pixels`` come from ``model_settings``; the model is
    returned in eval mode. Works the same for a local folder and a hub id (cached or online).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = model_settings.device
    kwargs = {"dtype": _torch_dtype(model_settings.dtype), "attn_implementation": ATTN_IMPLEMENTATION}
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
        processor = AutoProcessor.from_pretrained(name_or_path)
    except OSError as exc:
        raise FileNotFoundError(
            f"cannot load model {name_or_path!r}: {exc}. Set {env_name('model', 'name_or_path')} to a "
            "checkpoint folder or a hub id available offline (the tiny profile builds one with "
            "`dmms tiny-model --out DIR`)"
        ) from None
    if device != "auto":
        model = model.to(device)
    _limit_pixels(processor, model_settings.max_pixels)
    log.info("loaded %s (%s, %s, %d parameters)", name_or_path, model.dtype, model.device,
             sum(p.numel() for p in model.parameters()))
    return model.eval(), processor


def _limit_pixels(processor, max_pixels: int) -> None:
    """Cap the image (and video) processor at ``max_pixels``, keeping min_pixels below it."""
    for name in ("image_processor", "video_processor"):
        sub = getattr(processor, name, None)
        if sub is None or getattr(sub, "size", None) is None:
            continue
        size = dict(sub.size)
        size["longest_edge"] = max_pixels
        size["shortest_edge"] = min(size.get("shortest_edge") or max_pixels, max_pixels)
        sub.size = size


def ensure_model(settings: Settings) -> str:
    """The model path to load: for the tiny profile, build the RANDOM tiny model at
    ``model.name_or_path`` if nothing is there; for other profiles, the name as set."""
    name = settings.model.name_or_path
    if settings.profile != "tiny":
        return name
    path = Path(name)
    if path.is_dir() and (path / "config.json").is_file():
        return name
    from components.agent.tiny import build_tiny_model

    log.warning("no model at %s: building a RANDOM tiny Qwen2.5-VL there (profile tiny, seed %d)",
                path, settings.model.seed)
    build_tiny_model(path, seed=settings.model.seed, max_pixels=settings.model.max_pixels)
    return name


def freeze_vision(model) -> dict[str, int]:
    """Freeze the vision tower and its merger/projector; return parameter counts
    ``{"frozen": …, "trainable": …}`` over the whole model."""
    inner = getattr(model, "model", model)
    towers = [getattr(inner, n) for n in _VISION_MODULES if getattr(inner, n, None) is not None]
    if not towers:
        raise ValueError(f"{type(model).__name__} has no vision tower ({', '.join(_VISION_MODULES)}): "
                         "freeze_vision expects a Qwen2.5-VL model")
    for tower in towers:
        tower.requires_grad_(False)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("froze the vision tower and merger: %d frozen, %d trainable parameters", frozen, trainable)
    return {"frozen": frozen, "trainable": trainable}


# Qwen2.5-VL: the language model lives under ``model.language_model``; the vision tower and its
# merger (the projector) under ``model.visual``. LoRA (SFT and GRPO alike) targets only the former.
LANGUAGE_PREFIX = "model.language_model."
VISION_MARKERS = ("visual", "merger", "vision")


def language_linear_modules(model) -> list[str]:
    """Full names of every ``nn.Linear`` of the language model (not the vision tower/merger, not lm_head)."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name.startswith(LANGUAGE_PREFIX)
             and not any(m in name for m in VISION_MARKERS)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear layers under {LANGUAGE_PREFIX!r}: "
                         "LoRA targets a Qwen2.5-VL language model")
    return names


def language_lora_config(model, r: int, alpha: int, dropout: float):
    """peft ``LoraConfig`` over exactly the language model's linear layers (a regex of their names)."""
    import re

    from peft import LoraConfig

    leaves = sorted({n.rsplit(".", 1)[-1] for n in language_linear_modules(model)})
    pattern = rf"{re.escape(LANGUAGE_PREFIX)}(?:.*\.)?({'|'.join(map(re.escape, leaves))})"
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern,
                      bias="none", task_type="CAUSAL_LM")
