"""Every pipeline by name, and what a built pipeline is made of (``PipelineDef``).

    from pipelines.catalog import build, NAMES
    p = build("smoke", load_settings(), cluster=False)   # p.data, p.main, p.whole, p.params

Why: ``dmms compile`` compiles ``p.whole`` for each name; ``dmms submit`` sends it; ``dmms run``
runs ``p.data`` then ``p.main`` with the KFP local runner around a loopback tool-server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kfp.dsl.graph_component import GraphComponent

from components.common.settings import Settings

NAMES = ("full", "smoke", "retrain", "eval")
DATA_PARAMS = ("n_entities", "world_seed", "index_uri")


@dataclass
class PipelineDef:
    name: str
    data: GraphComponent
    main: GraphComponent
    whole: GraphComponent
    params: dict[str, Any] = field(default_factory=dict)

    def main_args(self, data_outputs: dict[str, str], overrides: dict[str, Any], tools_url: str) -> dict:
        """Arguments of the main stage: the whole pipeline's (minus the data stage's) and the data outputs."""
        args = {k: v for k, v in {**self.params, **overrides}.items() if k not in DATA_PARAMS}
        args["tools_url"] = tools_url
        wanted = self.main.component_spec.inputs or {}
        sources = {"world_uri": "world_uri", "world_test_uri": "test_uri", "rl_prompts_uri": "val_uri"}
        for key, source in sources.items():
            if key in wanted and key not in args:
                args[key] = data_outputs[source]
        return {k: v for k, v in args.items() if k in wanted}

    def data_args(self, overrides: dict[str, Any]) -> dict:
        merged = {**self.params, **overrides}
        return {k: merged[k] for k in DATA_PARAMS}


def build(name: str, settings: Settings, cluster: bool = True) -> PipelineDef:
    """Build pipeline ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise ValueError(f"unknown pipeline {name!r}: choose one of {', '.join(NAMES)}")
    from pipelines import eval as eval_pipeline
    from pipelines import full, retrain, smoke

    module = {"full": full, "smoke": smoke, "retrain": retrain, "eval": eval_pipeline}[name]
    return module.build(settings, cluster)
