"""Crop grounding: pixel boxes (clamped), spatial phrases, and GroundingDINO through transformers.

GroundingDINO weights cannot be downloaded here, so ``tiny_gdino`` builds a tiny RANDOM
GroundingDINO (Swin + BERT configs, a 12-word vocabulary) offline and saves it to a folder; the
test proves the code path (processor → model → post-processing → clamped box), not detection quality.
"""

from __future__ import annotations

import math

import pytest
from PIL import Image

from components.common.settings import load_settings
from components.search.grounding import GroundingError, crop_region, make_grounder, resolve_box

W, H = 300, 200
IMG = Image.new("RGB", (W, H), (40, 90, 160))


@pytest.mark.parametrize("region, box", [
    ([10, 20, 110, 120], [10, 20, 110, 120]),
    ([-10, -5, 50, 40], [0, 0, 50, 40]),
    ([250.4, 150.6, 900, 700], [250, 150, 300, 200]),
    ("[10, 20, 60, 70]", [10, 20, 60, 70]),
    (" (10.5,20,60,70.2) ", [10, 20, 60, 71]),
])
def test_boxes_are_clamped_to_the_image(region, box):
    crop, used = crop_region(IMG, region)
    assert used == box and crop.size == (box[2] - box[0], box[3] - box[1])


@pytest.mark.parametrize("region, message", [
    ([50, 50, 50, 60], "no area"),
    ([60, 10, 20, 40], "no area"),
    ([0, 0, 2, 2], "less than 4x4 pixels"),
    ([400, 300, 500, 400], "less than 4x4 pixels"),
    ([1, 2, 3], "4 numbers"),
    ([0, 0, math.nan, 10], "finite"),
    (["a", 0, 10, 10], "numbers"),
    ("", "box or a phrase"),
    (None, "box or a phrase"),
])
def test_bad_boxes_are_refused_with_a_reason(region, message):
    with pytest.raises(GroundingError, match=message):
        crop_region(IMG, region)


@pytest.mark.parametrize("phrase, box", [
    ("top-left", [0, 0, 150, 100]),
    ("the upper right corner", [150, 0, 300, 100]),
    ("the right half", [150, 0, 300, 200]),
    ("left", [0, 0, 150, 200]),
    ("center", [75, 50, 225, 150]),
    ("the middle of the image", [75, 50, 225, 150]),
    ("bottom third", [0, 133, 300, 200]),
    ("the top quarter", [0, 0, 300, 50]),
    ("the building on the left", [0, 0, 150, 200]),
    ("lower-left part", [0, 100, 150, 200]),
    ("the logo in the center left", [0, 50, 150, 150]),
    ("Bottom Right", [150, 100, 300, 200]),
])
def test_spatial_phrases_need_no_model(phrase, box):
    assert resolve_box((W, H), phrase) == box


def test_referring_expression_without_model_says_what_to_send():
    with pytest.raises(GroundingError, match=r"no grounding model is configured.*\[x1, y1, x2, y2\].*top-left"):
        crop_region(IMG, "the red car")
    assert make_grounder(load_settings()) is None


@pytest.fixture(scope="module")
def tiny_gdino(tmp_path_factory):
    """A tiny random GroundingDINO + processor saved to a folder, built offline from configs."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    path = tmp_path_factory.mktemp("gdino")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "the", "red", "car", "on", "left", "a"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=BertTokenizerFast(vocab_file=str(path / "vocab.txt")))
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
                                   image_size=64, out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=20, num_feature_levels=3, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32, use_timm_backbone=False)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_grounding_dino_path_returns_a_clamped_box(tiny_gdino):
    settings = load_settings(tools={"grounding_model": str(tiny_gdino)})
    grounder = make_grounder(settings)
    grounder.box_threshold = grounder.text_threshold = 0.0  # random weights: keep every query
    image = Image.new("RGB", (1200, 800), (200, 30, 30))
    located = grounder.locate(image, "the red car")
    assert located and all(len(b) == 4 for b in located)
    crop, box = crop_region(image, "the red car", grounder=grounder)
    assert 0 <= box[0] < box[2] <= 1200 and 0 <= box[1] < box[3] <= 800
    assert crop.size == (box[2] - box[0], box[3] - box[1])
    valid = [resolve_box(image.size, b) for b in located if b[2] - b[0] >= 4 and b[3] - b[1] >= 4]
    assert box == valid[0]  # the best-scoring usable detection
    # spatial words choose among detections; with none in that region the region itself is used
    _, left = crop_region(image, "the red car on the left", grounder=grounder)
    assert (left[0] + left[2]) / 2 <= 600
