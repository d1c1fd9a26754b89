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
    return _module(name).build(settings, cluster)


def _module(name: str):
    if name not in NAMES:
        raise ValueError(f"unknown pipeline {name!r}: choose one of {', '.join(NAMES)}")
    from pipelines import eval as eval_pipeline
    from pipelines import full, retrain, smoke

    return {"full": full, "smoke": smoke, "retrain": retrain, "eval": eval_pipeline}[name]


# What the paper-scale pipeline needs to be more than a smoke run: real seed questions and real
# benchmarks; without them it would train and evaluate on the synthetic offline world only.
REAL_DATA = {"full": ("seed_vqa_uri", "extra_benchmarks")}


class ParamsError(ValueError):
    """A pipeline's parameters would make it a different run than its name promises."""


def check_params(name: str, params: dict[str, Any], allow_synthetic: bool = False) -> None:
    """Refuse ``full`` without a seed VQA URI and benchmark URIs, or with the oracle teacher, unless
    ``allow_synthetic`` (``--allow-synthetic``): before anything runs, naming the parameter."""
    if allow_synthetic or name not in REAL_DATA:
        return
    p = build_defaults(name) | params
    missing = [k for k in REAL_DATA[name] if not str(p.get(k) or "").strip()]
    problems = [f"--param {k}=URI is required" for k in missing]
    if p.get("teacher") == "oracle":
        problems.append("--param teacher=oracle reads the answers from the offline world's metadata: use "
                        "teacher=llm (DMMS_TEACHER__BASE_URL)")
    if problems:
        raise ParamsError(f"pipeline {name} trains on real data: " + "; ".join(problems) +
                          " (seed_vqa_uri: a VQA set in the store, e.g. converted InfoSeek; extra_benchmarks: "
                          "NAME=URI,... of converted benchmarks). For a synthetic run on the offline world, "
                          "pass --allow-synthetic.")


def build_defaults(name: str) -> dict[str, Any]:
    return dict(_module(name).DEFAULTS)
