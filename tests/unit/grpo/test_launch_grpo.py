"""The GRPO step on 8 ranks starts ONE rollout server and every rank uses it (components/grpo/train.py
``train_step``), against an in-memory Kubernetes API (tests/unit/grpo/kube_standin.py says why).

The ranks are a stand-in here (no GPUs): it records what the launcher hands them, then does what
each rank's ``python -m components.grpo.train`` does first — loads its settings from that env and
enters ``rollout_server`` — and, as rank 0, publishes a result. What a GPU node adds: 8 real ranks
under FSDP, TRL pushing weights to the server from rank 0 only (its ``VLLMClient`` lives on the
main process), and every rank generating through it in lockstep.
"""

from __future__ import annotations

import os
import threading
from unittest import mock

from components.common.launch import ROLLOUT_LAUNCH_ENV, ROLLOUT_URL_ENV, write_result
from components.common.settings import load_settings
from components.common.storage import open_store
from components.grpo.servers import rollout_server
from components.grpo.train import GRPOResult, train_step
from tests.unit.grpo.kube_standin import DEPLOYMENTS, NS, OWNER, play_controller

LAUNCH = {"use_vllm": True, "launch_rollout_servers": True}


def test_eight_ranks_share_the_one_server_the_step_started(api, tmp_path, monkeypatch):
    monkeypatch.setenv("POD_NAME", OWNER["name"])
    monkeypatch.setenv("POD_UID", OWNER["uid"])
    monkeypatch.setenv("POD_NAMESPACE", NS)
    settings = load_settings(grpo=LAUNCH, storage={"root": str(tmp_path / "store")},
                             pipelines={"gpu_count": 8})
    out = open_store(settings).uri("checkpoints", "grpo-8")
    stop = threading.Event()
    controller = play_controller(api, None, stop)
    seen: dict = {}

    def ranks(argv, env):
        seen["argv"], seen["servers"] = argv, set(api.names(DEPLOYMENTS))
        seen["url"], seen["launch"] = env[ROLLOUT_URL_ENV], env[ROLLOUT_LAUNCH_ENV]
        seen["tools"] = env.get("DMMS_TOOLS__URL")
        with mock.patch.dict(os.environ, {ROLLOUT_URL_ENV: env[ROLLOUT_URL_ENV],
                                          ROLLOUT_LAUNCH_ENV: env[ROLLOUT_LAUNCH_ENV]}):
            child = load_settings(grpo={"use_vllm": True}, storage={"root": str(tmp_path / "store")})
            with rollout_server(child, api_client=api.api) as inside:  # what every rank does first
                seen["rank_url"] = inside.grpo.vllm_server_base_url
                seen["servers_in_rank"] = set(api.names(DEPLOYMENTS))
        write_result(settings, out, GRPOResult(final_uri=f"{out}/final", manifest_sha256="0" * 64,
                                               data_uri="d", global_step=3))  # rank 0's report
        return 0

    result = train_step(settings, "world/val", "sft/final", out, run_id="run-8", runner=ranks,
                        env={"DMMS_TOOLS__URL": "http://tools:8080"}, api_client=api.api, poll_s=0.05)
    stop.set()
    controller.join(5)

    (server,) = seen["servers"]  # started once, by the step, before the ranks
    assert seen["servers_in_rank"] == {server}  # a rank started none of its own
    assert seen["url"] == seen["rank_url"] == f"http://{server}.{NS}.svc:8000"
    assert seen["launch"] == "false" and seen["tools"] == "http://tools:8080"
    assert seen["argv"][seen["argv"].index("--num_processes") + 1] == "8"
    assert result.global_step == 3 and result.final_uri == f"{out}/final"
    assert api.names(DEPLOYMENTS) == set()  # and removed when the step ends
