"""The tiny random Qwen2.5-VL: builds offline, reloads through the one loader, renders images into
the right number of ``<|image_pad|>`` tokens, generates, trains (loss + gradients), freezes its
vision tower, and is reproducible for a seed.

Run: ``.venv/bin/python -m pytest -q tests/unit/agent/test_tiny.py`` (the model is built once per
module; a few extra builds check determinism and the CLI).
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from components.agent.models import ensure_model, freeze_vision, load_model_and_processor
from components.agent.tiny import PROTOCOL_TAGS, SPECIAL_TOKENS, build_tiny_model
from components.common.settings import load_settings

QUESTION = "Who built the bridge in this picture?"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def loaded(built):
    model, processor = load_model_and_processor(str(built), load_settings(profile="tiny").model)
    return model, processor


def _state_hash(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _image_inputs(processor, size: tuple[int, int]):
    image = Image.new("RGB", size, (30, 120, 200))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text, processor(text=[text], images=[image], return_tensors="pt")


def test_reloads_as_qwen2_5_vl_with_trl_template(built, loaded):
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    model, processor = loaded
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert processor.chat_template == qwen2_5_vl_chat_template
    assert processor.tokenizer.chat_template == qwen2_5_vl_chat_template
    assert model.config._attn_implementation == "sdpa"
    tok = processor.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert im_end in model.generation_config.eos_token_id
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.config.text_config.vocab_size == len(tok)


@pytest.mark.parametrize("size", [(200, 150), (28, 28), (1000, 700), (64, 512)])
def test_chat_template_renders_one_pad_per_merged_patch(loaded, size):
    model, processor = loaded
    text, inputs = _image_inputs(processor, size)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    grid = processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"]
    expected = int(grid[0].prod()) // processor.image_processor.merge_size**2
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == expected
    max_pixels = load_settings(profile="tiny").model.max_pixels
    assert 1 <= expected <= max_pixels // (28 * 28)  # an image is a handful of patches


def test_chat_template_tokenises_images_in_content(loaded):
    """The path TRL takes: images inside the messages, tokenised by apply_chat_template."""
    model, processor = loaded
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (200, 150))},
                                             {"type": "text", "text": QUESTION}]}]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=True, return_tensors="pt")
    expected = int(out["image_grid_thw"][0].prod()) // 4
    assert int((out["input_ids"] == model.config.image_token_id).sum()) == expected
    assert out["pixel_values"].shape[0] == int(out["image_grid_thw"][0].prod())


def test_generate_returns_new_tokens_that_decode(loaded):
    model, processor = loaded
    _, inputs = _image_inputs(processor, (200, 150))
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert 1 <= new.numel() <= 6
    assert isinstance(processor.decode(new, skip_special_tokens=True), str)
    with torch.no_grad():
        again = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, again)  # greedy is deterministic


def test_protocol_tags_are_single_tokens_that_round_trip(loaded):
    tok = loaded[1].tokenizer
    for tag in PROTOCOL_TAGS:
        ids = tok.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, tag
        assert tok.decode(ids, skip_special_tokens=True) == tag
    for token in SPECIAL_TOKENS:
        assert len(tok.encode(token, add_special_tokens=False)) == 1, token
    turn = "<reason>I search with the image.</reason><img_search><img></img_search>"
    ids = tok.encode(turn, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == turn
    text = "Zundert, 1853 — naïve café 橋"  # bytes outside the corpus still round-trip
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_year_tokens_make_a_year_one_token_wherever_it_stands(tmp_path):
    """With ``model.tiny.year_tokens`` a year is one token in a page, a date range and an answer (the
    same id: copying it is copying one token); a longer number is not cut at a year; without the
    setting numbers are single digits, as in Qwen's own tokenizer."""
    from components.common.settings_sections import TinyModelSettings

    with_years = build_tiny_model(tmp_path / "years", tiny=TinyModelSettings(year_tokens=True), max_pixels=12544)
    tok = load_model_and_processor(str(with_years), load_settings(profile="tiny").model)[1].tokenizer
    year = tok.convert_tokens_to_ids("1853")
    for text in ("born in 1853 in the city", "(1853–1934)", "<answer>1853</answer>", "in 1853."):
        ids = tok.encode(text, add_special_tokens=False)
        assert ids.count(year) == 1 and tok.decode(ids) == text, text
    assert year not in tok.encode("18530 members", add_special_tokens=False)
    plain = load_model_and_processor(str(build_tiny_model(tmp_path / "plain", max_pixels=12544)),
                                     load_settings(profile="tiny").model)[1].tokenizer
    assert len(plain.encode("1853", add_special_tokens=False)) == 4


def test_parameter_count_is_tiny(loaded):
    n = sum(p.numel() for p in loaded[0].parameters())
    assert 400_000 <= n <= 1_000_000


def test_same_seed_same_model_other_seed_other_weights(built, loaded, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    for name in TOKENIZER_FILES:
        assert (again / name).read_bytes() == (built / name).read_bytes(), name
    settings = load_settings(profile="tiny").model
    same_hash = _state_hash(load_model_and_processor(str(again), settings)[0])
    assert same_hash == _state_hash(loaded[0])
    assert _state_hash(load_model_and_processor(str(other), settings)[0]) != same_hash


def test_freeze_vision_then_train_language_layers(built):
    model, processor = load_model_and_processor(str(built), load_settings(profile="tiny").model)
    counts = freeze_vision(model)
    assert counts["frozen"] + counts["trainable"] == sum(p.numel() for p in model.parameters())
    assert all(not p.requires_grad for p in model.model.visual.parameters())
    assert all(not p.requires_grad for p in model.model.visual.merger.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    assert model.lm_head.weight.requires_grad
    assert counts["frozen"] == sum(p.numel() for p in model.model.visual.parameters())

    model.train()
    _, inputs = _image_inputs(processor, (200, 150))
    labels = inputs["input_ids"].clone()
    labels[labels == model.config.image_token_id] = -100
    loss = model(**inputs, labels=labels).loss
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(math.log(model.config.text_config.vocab_size), rel=0.2)
    loss.backward()
    for name, p in model.model.language_model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.model.language_model.layers.parameters())
    assert all(p.grad is None for p in model.model.visual.parameters())


def test_loader_applies_max_pixels_from_settings(built):
    settings = load_settings(profile="tiny", model={"max_pixels": 4 * 28 * 28}).model
    model, processor = load_model_and_processor(str(built), settings)
    _, inputs = _image_inputs(processor, (1000, 700))
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) <= 4


def test_ensure_model_builds_tiny_once_and_passes_other_names(tmp_path):
    target = tmp_path / "models" / "tiny"
    settings = load_settings(profile="tiny", model={"name_or_path": str(target)})
    assert ensure_model(settings) == str(target)
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert ensure_model(settings) == str(target)
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt

    paper = load_settings(profile="paper", tools={"token": "t"}, storage={"root": "store"})
    assert ensure_model(paper) == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_bad_inputs_get_clear_errors(built, tmp_path):
    with pytest.raises(FileExistsError, match="choose another --out"):
        build_tiny_model(built)
    with pytest.raises(ValueError, match="DMMS_MODEL__MAX_PIXELS"):
        build_tiny_model(tmp_path / "small", max_pixels=100)
    assert not (tmp_path / "small").exists()
    with pytest.raises(FileNotFoundError, match="DMMS_MODEL__NAME_OR_PATH"):
        load_model_and_processor(str(tmp_path / "missing"), load_settings(profile="tiny").model)


def test_cli_tiny_model_writes_a_loadable_model(tmp_path):
    from components.cli import _register, app

    _register()
    out = tmp_path / "cli-model"
    result = CliRunner().invoke(app, ["tiny-model", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(out))
    model, _ = load_model_and_processor(str(out), load_settings(profile="tiny").model)
    assert model.config.text_config.hidden_size == 64
