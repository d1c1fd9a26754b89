"""Give the GRPO core a vLLM rollout server from the settings: launch one on Kubernetes, or use the URL given.

Why: on the cluster (``paper`` profile: ``grpo.use_vllm`` and ``grpo.launch_rollout_servers``) the
GRPO step starts its own rollout server (components/grpo/rollout_pods.py: Deployment + Service owned
by the step's pod), points ``grpo.vllm_server_base_url`` at it, trains, and removes it on the way
out — also when training raises. Otherwise (CPU, tiny profile, or a server someone else runs) the
settings pass through unchanged, so the same step body works everywhere::

    from components.grpo.servers import rollout_server
    with rollout_server(settings, run_id=run_id) as settings:
        run_grpo(settings, data_uri, model, out_uri)

The server is labelled ``deepmmsearch.io/run=<run id>``, so the pipeline's exit handler
(:func:`cleanup_rollout_servers`) can delete what a killed step left behind. Tests:
``pytest tests/unit/grpo/test_servers.py`` (against an in-memory Kubernetes API).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from components.common.settings import Settings
from components.common.trainjob import QUEUE_LABEL
from components.grpo.rollout_pods import (
    RUN_LABEL,
    RolloutError,
    RolloutServers,
    RolloutSpec,
    current_namespace,
    delete_by_label,
    in_cluster,
    run_label_value,
)

log = logging.getLogger(__name__)


def rollout_spec(settings: Settings, run_id: str = "") -> RolloutSpec:
    """The rollout server the settings ask for: model, GPUs, memory share, the train image and the
    GPU node pool of ``settings.pipelines``; labelled with the run when ``run_id`` is given."""
    g, p = settings.grpo, settings.pipelines
    return RolloutSpec(
        model=g.rollout_model or settings.model.name_or_path,
        tensor_parallel=g.rollout_tensor_parallel,
        gpu_memory_utilization=g.rollout_gpu_memory_utilization,
        max_pixels=settings.model.max_pixels,
        image=p.train_image,
        node_selector=dict(p.gpu_node_selector),
        tolerations=[dict(t) for t in p.gpu_tolerations],
        labels={**({RUN_LABEL: run_label_value(run_id)} if run_id else {}),
                **({QUEUE_LABEL: p.kueue_queue} if p.kueue_queue else {})},  # admitted by Kueue
    )


@contextmanager
def rollout_server(settings: Settings, run_id: str = "", **launcher: Any) -> Iterator[Settings]:
    """Yield ``settings`` with ``grpo.vllm_server_base_url`` pointing at a ready rollout server.

    Launches one only when ``grpo.use_vllm`` and ``grpo.launch_rollout_servers``; it is deleted when
    the block ends, however it ends. ``launcher`` goes to :class:`RolloutServers` (namespace, owner,
    api_client, poll_s, ...: tests and special setups); by default everything comes from the pod.
    """
    g = settings.grpo
    if not (g.use_vllm and g.launch_rollout_servers):
        yield settings
        return
    if g.vllm_server_base_url:
        log.warning("grpo.launch_rollout_servers is on: the launched server replaces "
                    "grpo.vllm_server_base_url=%s", g.vllm_server_base_url)
    launcher.setdefault("ready_timeout_s", g.rollout_ready_timeout_s)
    given = g.vllm_server_base_url
    with RolloutServers(rollout_spec(settings, run_id), **launcher) as url:
        g.vllm_server_base_url = url
        log.info("GRPO rolls out on %s", url)
        try:
            yield settings
        finally:  # the server is about to go: do not leave its URL behind
            g.vllm_server_base_url = given


def cleanup_rollout_servers(run_id: str, **kw: Any) -> list[str]:
    """Delete rollout Deployments/Services left by run ``run_id`` (exit handler); return what was
    deleted. Outside a cluster (no service host or token) there is nothing to reach: log and skip.
    ``kw`` (namespace, api_client) is for tests; in a pod both come from the pod itself."""
    if not run_id:
        log.info("no run id: no rollout servers to clean up")
        return []
    if "api_client" not in kw and not in_cluster():
        log.info("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset or no service-account token): "
                 "no rollout servers to clean up")
        return []
    namespace = kw.pop("namespace", None) or current_namespace()
    try:
        return delete_by_label(namespace, {RUN_LABEL: run_label_value(run_id)}, **kw)
    except RolloutError:  # the owner reference still removes them with the step's pod
        log.exception("could not delete the rollout servers of run %s in %s", run_id, namespace)
        return []
