"""``smoke``: the same DAG as ``full`` on the tiny profile with small numbers (CPU, minutes).

``dmms run --pipeline smoke`` (``make run``) runs it with the KFP local runner on the embedded default:
a 10-entity world, a handful of datagen samples from the oracle teacher, the tiny random Qwen2.5-VL
trained by SFT and GRPO, evaluated on a few test questions, promoted in the local MLflow registry.
On a cluster (``make submit PIPELINE=smoke``) its steps run on CPU nodes: no GPU requests.
"""

from __future__ import annotations

from typing import Any

from components.common.settings import Settings
from pipelines.catalog import PipelineDef
from pipelines.full import DEFAULTS as FULL_DEFAULTS
from pipelines.full import build_train_pipeline

DEFAULTS: dict[str, Any] = {**FULL_DEFAULTS, "n_entities": 10, "datagen_n": 8, "eval_limit": 4}


def build(settings: Settings, cluster: bool = True) -> PipelineDef:
    return build_train_pipeline(settings, cluster, "dmms-smoke", "tiny", DEFAULTS, gpu_pool=False,
                                description=__doc__.split("\n\n")[0])
