"""Every pipeline compiles; the compiled YAML carries what the cluster needs (GPUs, node pool,
tolerations, /dev/shm, Secrets, retries, caching) and the intended DAG.

No Kubernetes or KFP server runs here: these tests read the YAML KFP would receive."""

import re
from pathlib import Path

import pytest
import yaml

from components.common.settings import load_settings
from pipelines.catalog import NAMES
from pipelines.compile import compile_all

GPU_STEPS = {"sft-op", "grpo-op", "evaluate-op"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    out = tmp_path_factory.mktemp("compiled")
    paths = compile_all(load_settings(), Path(out))
    return {name: tuple(yaml.safe_load_all(path.read_text())) for name, path in paths.items()}


def _tasks(spec: dict) -> dict[str, dict]:
    """Every leaf task of every (nested) DAG, by task name."""
    out = {}
    for comp in spec["components"].values():
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            out[name] = task
    return out


def _executors(spec: dict, plat: dict) -> tuple[dict, dict]:
    return spec["deploymentSpec"]["executors"], plat["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_every_pipeline_compiles(compiled):
    assert set(compiled) == set(NAMES)
    for name, (spec, _) in compiled.items():
        assert spec["pipelineInfo"]["name"] == f"dmms-{name}"


def _base(name: str) -> str:
    """A task's component: evaluate-op-2 and evaluate-op-3 are evaluate-op used again."""
    return re.sub(r"-\d+$", "", name)


@pytest.mark.parametrize("name", ["full", "retrain", "eval"])
def test_gpu_steps_request_gpus_on_the_gpu_pool(compiled, name):
    spec, plat = compiled[name]
    s = load_settings().pipelines
    execs, k8s = _executors(spec, plat)
    gpu_execs = [e for e in execs if _base(e.removeprefix("exec-")) in GPU_STEPS]
    assert gpu_execs
    for e in gpu_execs:
        res = execs[e]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == s.gpu_accelerator
        assert int(res["accelerator"]["resourceCount"]) == s.gpu_count
        assert execs[e]["container"]["image"] == s.train_image
        assert k8s[e]["nodeSelector"]["labels"] == s.gpu_node_selector
        assert k8s[e]["tolerations"] == s.gpu_tolerations
        assert {"mountPath": "/dev/shm", "medium": "Memory", "volumeName": "dshm",
                "sizeLimit": s.shm_size} in k8s[e]["emptyDirMounts"]
    for e in set(execs) - set(gpu_execs):  # CPU steps stay off the GPU pool
        assert "accelerator" not in execs[e]["container"].get("resources", {})
        assert "nodeSelector" not in k8s[e]
        assert execs[e]["container"]["image"] == s.base_image


def test_smoke_runs_on_cpu_nodes(compiled):
    spec, plat = compiled["smoke"]
    execs, k8s = _executors(spec, plat)
    for e in execs:
        assert "accelerator" not in execs[e]["container"].get("resources", {})
        assert "nodeSelector" not in k8s[e]


@pytest.mark.parametrize("name", NAMES)
def test_secrets_and_env_reach_every_step(compiled, name):
    spec, plat = compiled[name]
    s = load_settings().pipelines
    execs, k8s = _executors(spec, plat)
    for e in execs:
        wired = {(x["secretName"], k["secretKey"], k["envVar"], x["optional"])
                 for x in k8s[e]["secretAsEnv"] for k in x["keyToEnv"]}
        assert ("minio-credentials", "rootUser", "DMMS_STORAGE__ACCESS_KEY", False) in wired
        assert ("toolserver-secrets", "token", "DMMS_TOOLS__TOKEN", False) in wired
        assert ("llm-credentials", "judge-api-key", "DMMS_JUDGE__API_KEY", True) in wired
        env = {v["name"]: v["value"] for v in execs[e]["container"]["env"]}
        assert env["DMMS_PROFILE"] == ("tiny" if name == "smoke" else "paper")
        assert env["DMMS_TRACKING__URI"] == s.cluster_env["DMMS_TRACKING__URI"]
        assert not any("SECRET" in k or "TOKEN" in k for k in env)  # secrets only via secretAsEnv


@pytest.mark.parametrize("name", NAMES)
def test_retries_and_caching(compiled, name):
    tasks = _tasks(compiled[name][0])
    for tname in ("world-op", "index-op"):  # deterministic: cached, not retried
        assert tasks[tname]["cachingOptions"] == {"enableCache": True}
    for tname, task in tasks.items():
        if tname in ("world-op", "index-op") or not _base(tname).endswith("-op"):
            continue
        assert task["cachingOptions"].get("enableCache") is not True, tname
        if _base(tname) in GPU_STEPS | {"datagen-op"}:
            assert task["retryPolicy"]["maxRetryCount"] == load_settings().pipelines.retries
        else:
            assert "retryPolicy" not in task


def _deps(tasks: dict) -> dict[str, set[str]]:
    return {n: set(t.get("dependentTasks", [])) for n, t in tasks.items()}


def test_full_dag_is_the_intended_one(compiled):
    spec, _ = compiled["full"]
    comps = spec["components"]
    data = _deps(comps["comp-dmms-full-data"]["dag"]["tasks"])
    assert data == {"world-op": set(), "index-op": {"world-op"}}
    train = comps["comp-dmms-full-train"]["dag"]["tasks"]
    assert train["cleanup-op"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert train["cleanup-op"]["dependentTasks"] == ["exit-handler-1"]
    inner = comps["comp-exit-handler-1"]["dag"]["tasks"]
    assert _deps(inner) == {
        "datagen-op": set(), "sft-op": {"datagen-op"}, "grpo-op": {"datagen-op", "sft-op"},
        "evaluate-op": {"sft-op"}, "evaluate-op-2": {"sft-op"}, "evaluate-op-3": {"grpo-op", "sft-op"},
        "promote-op": {"evaluate-op-2", "evaluate-op-3", "grpo-op"}}
    # before and after on the same benchmarks: base, SFT and RL; RL is gated against SFT's evaluation
    labels = {n: inner[n]["inputs"]["parameters"]["label"]["runtimeValue"]["constant"]
              for n in ("evaluate-op", "evaluate-op-2", "evaluate-op-3")}
    assert labels == {"evaluate-op": "base", "evaluate-op-2": "sft", "evaluate-op-3": "rl"}
    ref = inner["promote-op"]["inputs"]["parameters"]["reference_eval_run_id"]["taskOutputParameter"]
    assert ref["producerTask"] == "evaluate-op-2"
    assert inner["promote-op"]["inputs"]["parameters"]["eval_run_id"]["taskOutputParameter"]["producerTask"] == \
        "evaluate-op-3"
    root = _deps(spec["root"]["dag"]["tasks"])
    assert root == {"dmms-full-data": set(), "dmms-full-train": {"dmms-full-data"}}
    # every step gets the KFP run id (MLflow tag dmms.kfp_run_id); deterministic steps do not
    tasks = _tasks(spec)
    for name in ("datagen-op", "sft-op", "grpo-op", "evaluate-op", "promote-op", "cleanup-op"):
        assert tasks[name]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert "run_id" not in tasks["world-op"]["inputs"]["parameters"]


def test_retrain_continues_from_the_champion(compiled):
    comps = compiled["retrain"][0]["components"]
    tasks = comps["comp-exit-handler-1"]["dag"]["tasks"]
    assert _deps(tasks) == {"champion-op": set(), "datagen-op": set(), "grpo-op": {"champion-op", "datagen-op"},
                            "evaluate-op": {"grpo-op"}, "promote-op": {"evaluate-op", "grpo-op"}}
    model = tasks["grpo-op"]["inputs"]["parameters"]["model_uri"]["taskOutputParameter"]
    assert model["producerTask"] == "champion-op"


def test_eval_pipeline_evaluates_the_given_model(compiled):
    spec, _ = compiled["eval"]
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert set(tasks) == {"evaluate-op"}
    assert "model_uri" in spec["root"]["inputDefinitions"]["parameters"]


@pytest.mark.parametrize("name", ["full", "retrain"])
def test_grpo_pod_can_launch_its_rollout_server(compiled, name):
    """The GRPO step's pod carries what components/grpo/servers.py needs (manifests/README.md): the
    NetworkPolicy label, its own name/uid from the downward API (owner reference), the pod template."""
    spec, plat = compiled[name]
    execs, k8s = _executors(spec, plat)
    wanted_env = {("POD_NAME", "metadata.name"), ("POD_UID", "metadata.uid")}
    for e in execs:
        conf = k8s.get(e, {})
        labels = conf.get("podMetadata", {}).get("labels", {})
        field_env = {(x["name"], x["fieldPath"]) for x in conf.get("fieldPathAsEnv", [])}
        mounts = {(x["configMapName"], x["mountPath"]) for x in conf.get("configMapAsVolume", [])}
        if e == "exec-grpo-op":
            assert labels.get("deepmmsearch.io/role") == "grpo-trainer"
            assert wanted_env <= field_env
            assert ("rollout-pod-template", "/etc/dmms/rollout") in mounts
        else:
            assert "deepmmsearch.io/role" not in labels, e
            assert not field_env & wanted_env, e
            assert not mounts, e


def test_runs_use_the_service_account_the_rollout_rbac_binds():
    """submit/schedule pass ``pipelines.service_account`` per run (KFP sets it on every pod); it must
    be the account manifests/base/rbac binds to the rollout-launcher Role, or the GRPO step gets 403."""
    rbac = Path(__file__).resolve().parents[2] / "manifests/base/rbac/rbac.yaml"
    binding = next(d for d in yaml.safe_load_all(rbac.read_text()) if d["kind"] == "RoleBinding")
    assert [s["name"] for s in binding["subjects"]] == [load_settings().pipelines.service_account]


@pytest.mark.parametrize("name", NAMES)
def test_every_gpu_pod_carries_the_kueue_queue_label(compiled, name):
    """Kueue admits GPU pods by the kueue.x-k8s.io/queue-name label (pod integration); CPU pods stay unqueued."""
    spec, plat = compiled[name]
    execs, k8s = _executors(spec, plat)
    queue = load_settings().pipelines.kueue_queue
    for e in execs:
        labels = k8s.get(e, {}).get("podMetadata", {}).get("labels", {})
        gpu = "accelerator" in execs[e]["container"].get("resources", {})
        assert (labels.get("kueue.x-k8s.io/queue-name") == queue) if gpu else ("kueue.x-k8s.io/queue-name" not in labels), e


def test_with_two_nodes_the_training_steps_are_small_launcher_pods(tmp_path):
    """nodes > 1: SFT and GRPO run as a TrainJob (components/common/trainjob.py); their own pod only
    creates and watches it, so it asks for no GPU and carries its identity for the owner reference."""
    settings = load_settings()
    settings.pipelines.nodes = 2
    path = compile_all(settings, tmp_path, names=("full",))["full"]
    spec, plat = yaml.safe_load_all(path.read_text())
    execs, k8s = _executors(spec, plat)
    for e in ("exec-sft-op", "exec-grpo-op"):
        assert "accelerator" not in execs[e]["container"].get("resources", {}), e
        conf = k8s[e]
        assert "kueue.x-k8s.io/queue-name" not in conf.get("podMetadata", {}).get("labels", {})
        assert {"POD_NAME", "POD_UID"} <= {x["name"] for x in conf.get("fieldPathAsEnv", [])}
    assert "deepmmsearch.io/role" not in k8s["exec-grpo-op"].get("podMetadata", {}).get("labels", {})
    assert "accelerator" in execs["exec-evaluate-op"]["container"]["resources"]  # evaluation stays on a GPU
