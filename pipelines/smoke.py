"""``smoke``: the same DAG as ``full`` on the tiny profile with small numbers (CPU, minutes).

``dmms run --pipeline smoke`` (``make run``) runs it with the KFP local runner on the embedded default:
a 400-entity world (~2,100 oracle rows: enough that a from-scratch model must copy rather than
memorise, and still minutes of datagen), the tiny Qwen2.5-VL built from scratch by the SFT step
(tokenizer on the data's own text), copy-pretrained, SFT'd on counterfactual rows and GRPO-trained
(profiles/tiny.yaml says why each value is what it is), evaluated on the whole test split (262
questions), promoted in the local MLflow registry. Small runs: ``--param n_entities=40 --param
datagen_n=8 --param eval_limit=4``.
On a cluster (``make submit PIPELINE=smoke``) its steps run on CPU nodes: no GPU requests.
"""

from __future__ import annotations

from typing import Any

from components.common.settings import Settings
from pipelines.catalog import PipelineDef
from pipelines.full import DEFAULTS as FULL_DEFAULTS
from pipelines.full import build_train_pipeline

# modes: the before/after table reads agent and direct (tools off); RAG is the full pipeline's extra baseline
DEFAULTS: dict[str, Any] = {**FULL_DEFAULTS, "n_entities": 400, "datagen_n": 2000, "eval_limit": 0,
                            "modes": "direct,agent", "teacher": "oracle"}  # the offline world's own teacher


def build(settings: Settings, cluster: bool = True) -> PipelineDef:
    return build_train_pipeline(settings, cluster, "dmms-smoke", "tiny", DEFAULTS, gpu_pool=False,
                                description=__doc__.split("\n\n")[0])
