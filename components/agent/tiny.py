"""Build a tiny, RANDOM Qwen2.5-VL offline: the model the ``tiny`` profile trains on one CPU.

Why: nothing may be downloaded from a model hub here, yet SFT, GRPO, the agent loop and
evaluation must run end to end on real transformers/TRL code paths. So we build a real
``Qwen2_5_VLForConditionalGeneration`` from a tiny config (~0.6M parameters) with a real
byte-level BPE tokenizer trained on a small packaged corpus (``tiny_corpus.txt``), Qwen's special
tokens, the agent protocol's tags as single tokens, TRL's stock ``qwen2_5_vl`` chat template and a
``Qwen2_5_VLProcessor`` that shrinks images to a handful of patches. Its weights are random: it
emits gibberish until trained, and it is only for exercising the pipeline.

Same seed → byte-identical tokenizer files and identical weights.

Run: ``dmms tiny-model --out .dmms/models/tiny --seed 0`` (or ``build_tiny_model(Path(...))``).
Load it like any checkpoint with :func:`components.agent.models.load_model_and_processor`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from components.agent.protocol import PROTOCOL_TAGS
from components.common.atomic import staged_dir

log = logging.getLogger(__name__)

CORPUS_PATH = Path(__file__).with_name("tiny_corpus.txt")
BPE_VOCAB_SIZE = 1536  # upper bound; the small corpus saturates a little below it
# Qwen2.5-VL's special tokens, in Qwen's own order (ids follow the BPE vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
# The agent protocol's tags (docs/design.md §2, from the protocol module) become single, NON-special
# tokens so they survive decoding with skip_special_tokens=True.
# Tiny architecture (the defaults of ``model.tiny``). Text: head_dim = 64 / 4 = 16, so mrope_section sums
# to 8 (Qwen's 1:1.5:1.5).
TEXT_CONFIG = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6, "use_sliding_window": False, "max_window_layers": 2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
}
VISION_CONFIG = {
    "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
    "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    "window_size": 112, "fullatt_block_indexes": [1], "out_hidden_size": 64,
}
ATTN_IMPLEMENTATION = "sdpa"  # checked on CPU: sdpa and eager both run; sdpa is the faster one


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL's 3-D rope split of ``head_dim / 2`` rotary pairs (temporal, height, width), about
    1 : 1.5 : 1.5 as in the released models (head_dim 128 -> [16, 24, 24])."""
    half = head_dim // 2
    spatial = (half - half // 4) // 2
    return [half - 2 * spatial, spatial, spatial]


def architecture(tiny: Any | None = None) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(text config, vision config, tie embeddings) for a ``TinyModelSettings`` (None: the defaults)."""
    text, vision = json.loads(json.dumps(TEXT_CONFIG)), dict(VISION_CONFIG)
    if tiny is None:
        return text, vision, False
    head_dim, rest = divmod(tiny.hidden_size, tiny.num_heads)
    if rest or head_dim % 8 or tiny.num_heads % tiny.num_kv_heads:
        raise ValueError(f"tiny model: hidden_size {tiny.hidden_size} / num_heads {tiny.num_heads} must be a "
                         "multiple of 8 and num_heads a multiple of num_kv_heads: change DMMS_MODEL__TINY__*")
    text.update(hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
                num_hidden_layers=tiny.num_layers, max_window_layers=tiny.num_layers,
                num_attention_heads=tiny.num_heads, num_key_value_heads=tiny.num_kv_heads)
    text["rope_parameters"]["mrope_section"] = mrope_section(head_dim)
    vision.update(depth=tiny.vision_depth, out_hidden_size=tiny.hidden_size,
                  fullatt_block_indexes=[tiny.vision_depth - 1])
    return text, vision, tiny.tie_embeddings


YEARS = range(1700, 2030)  # every year the offline world writes (and the counterfactual swap draws: 1700-1999)


def train_tokenizer(corpus: str, vocab_size: int = BPE_VOCAB_SIZE, year_tokens: bool = False):
    """Train a byte-level BPE on ``corpus`` and wrap it as a Qwen2 tokenizer with Qwen's special
    tokens and the protocol tags (and, with ``year_tokens``, one token per year of ``YEARS``, matched
    only as a whole number). Deterministic: the same corpus gives the same files."""
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus.splitlines(keepends=True), trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in trained["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"], merges=merges, unk_token=None, bos_token=None,
        eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=32768,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
                         special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in PROTOCOL_TAGS])
    if year_tokens:  # "1853" in "(1853–1934)", " 1853" and "<answer>1853": one token, the same one
        tokenizer.add_tokens([AddedToken(str(y), special=False, normalized=False, single_word=True) for y in YEARS])
    tokenizer.eos_token = "<|im_end|>"  # as in Qwen2.5-VL-Instruct: a turn ends the generation
    return tokenizer


def make_processor(tokenizer, max_pixels: int):
    """A ``Qwen2_5_VLProcessor`` over ``tokenizer`` whose images are at most ``max_pixels``."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    factor = VISION_CONFIG["patch_size"] * VISION_CONFIG["spatial_merge_size"]
    if max_pixels < factor * factor:
        raise ValueError(f"max_pixels={max_pixels} is below one {factor}x{factor} patch: "
                         f"raise DMMS_MODEL__MAX_PIXELS to at least {factor * factor}")
    size = {"shortest_edge": min(4 * factor * factor, max_pixels), "longest_edge": max_pixels}
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=VISION_CONFIG["patch_size"],
                                            merge_size=VISION_CONFIG["spatial_merge_size"])
    video_processor = Qwen2VLVideoProcessor(size=size, patch_size=VISION_CONFIG["patch_size"],
                                            merge_size=VISION_CONFIG["spatial_merge_size"])
    # TRL recognises its stock template by identity and swaps in its training variant for SFT.
    tokenizer.chat_template = qwen2_5_vl_chat_template
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=qwen2_5_vl_chat_template)


def make_model(tokenizer, seed: int, tiny: Any | None = None):
    """A randomly initialised tiny ``Qwen2_5_VLForConditionalGeneration`` matching ``tokenizer``,
    shaped by ``tiny`` (a ``TinyModelSettings``; None: the module's defaults)."""
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text_config, vision_config, tie = architecture(tiny)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    config = Qwen2_5_VLConfig(
        text_config={**text_config, "vocab_size": len(tokenizer), "bos_token_id": pad,
                     "eos_token_id": eos, "pad_token_id": pad},
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )
    config.text_config.tie_word_embeddings = tie
    config._attn_implementation = ATTN_IMPLEMENTATION
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[eos, pad], pad_token_id=pad, bos_token_id=pad, do_sample=False,
    )
    return model


def build_tiny_model(out: Path, seed: int = 0, max_pixels: int | None = None, tiny: Any | None = None,
                     corpus: Iterable[str] | None = None) -> Path:
    """Build the tiny RANDOM Qwen2.5-VL and save model, tokenizer, processor and chat template to
    ``out`` (written to a temporary folder first, then moved: never half-written).

    ``max_pixels`` defaults to the tiny profile's ``model.max_pixels``; ``tiny`` (a
    ``TinyModelSettings``) shapes the model and bounds the vocabulary (None: the module's defaults);
    ``corpus`` (lines of text, e.g. the SFT data's own) replaces the packaged tokenizer corpus.
    Refuses a non-empty ``out``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder: "
                              "remove it or choose another --out")
    if max_pixels is None:
        from components.common.settings import load_settings

        max_pixels = load_settings(profile="tiny").model.max_pixels
    started = time.perf_counter()
    text = CORPUS_PATH.read_text(encoding="utf-8") if corpus is None else "\n".join(corpus)
    tokenizer = train_tokenizer(text, tiny.vocab_size if tiny is not None else BPE_VOCAB_SIZE,
                                year_tokens=bool(tiny is not None and tiny.year_tokens))
    processor = make_processor(tokenizer, max_pixels)
    model = make_model(tokenizer, seed, tiny)
    with staged_dir(out) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    n_params = sum(p.numel() for p in model.parameters())
    log.warning("built a RANDOM tiny Qwen2.5-VL (%d parameters, vocab %d, seed %d, tokenizer on %s) at %s "
                "in %.2f s; it is for exercising the pipeline offline, not a real model", n_params,
                len(tokenizer), seed, "the packaged corpus" if corpus is None else "the given corpus", out,
                time.perf_counter() - started)
    return out
