"""Training curves of the report: SFT loss and GRPO reward per step from MLflow-shaped histories."""

from __future__ import annotations

from PIL import Image

from components.evaluate.plots import training_curves


def test_training_curves_draw_both_panels_and_nothing_without_histories(tmp_path):
    histories = {"sft": {"loss": [(s, 3.0 / s) for s in range(1, 30)]},
                 "grpo": {"reward": [(s, 0.1 * s) for s in range(1, 6)], "reward_std": [(s, 0.05) for s in range(1, 6)]}}
    path = training_curves(histories, tmp_path / "curves.png")
    with Image.open(path) as img:
        assert img.size[0] > 900 and img.size[1] > 300  # two panels side by side
    only_sft = training_curves({"sft": histories["sft"], "grpo": {"reward": []}}, tmp_path / "sft.png")
    with Image.open(only_sft) as img:
        assert img.size[0] < 600
    assert training_curves({}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
