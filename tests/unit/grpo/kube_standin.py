"""An in-memory Kubernetes API for the rollout-launcher tests (kmock's KubernetesEmulator on loopback).

Why a stand-in: no Kubernetes API server can run on this machine (no cluster, no Docker). kmock's
KubernetesEmulator is a stateful fake API server over real HTTP on 127.0.0.1, so the real
``kubernetes`` client makes the same REST calls it makes in a pod (create, read, patch status, list,
delete). It has no controllers (a test plays the Deployment controller with :func:`play_controller`),
no garbage collector (owner references are only stored) and it ignores label selectors (so code
under test must, and does, re-check labels). The ``api`` fixture in conftest.py yields one.
"""

from __future__ import annotations

import asyncio
import threading
import time

import kmock
from kubernetes import client as k8s

NS = "dmms-test"
OWNER = {"apiVersion": "v1", "kind": "Pod", "name": "grpo-step-abc", "uid": "0f5e-uid",
         "controller": False, "blockOwnerDeletion": False}
DEPLOYMENTS, SERVICES = "apps/v1/deployments", "v1/services"
TRAINJOBS = "trainer.kubeflow.org/v1alpha1/trainjobs"
INFERENCESERVICES = "serving.kserve.io/v1beta1/inferenceservices"


class StandIn:
    """kmock's KubernetesEmulator served on 127.0.0.1 from a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.handler, self.server = self._run(self._start())
        cfg = k8s.Configuration()
        cfg.host = str(self.server.url).rstrip("/")
        self.api = k8s.ApiClient(cfg)
        self.apps, self.core = k8s.AppsV1Api(self.api), k8s.CoreV1Api(self.api)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self):
        handler = kmock.KubernetesEmulator()
        await handler.__aenter__()
        server = kmock.Server(handler)
        await server.__aenter__()
        for resource in (DEPLOYMENTS, SERVICES, TRAINJOBS, INFERENCESERVICES, "v1/pods", "v1/events"):
            handler.resources[resource].namespaced = True
        return handler, server

    async def _stop(self):
        await self.server.__aexit__(None, None, None)
        await self.handler.__aexit__(None, None, None)

    def close(self) -> None:
        self.api.close()
        self._run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def get(self, resource: str, name: str) -> dict | None:
        """The object as the API serves it (raw JSON), or None after a 404."""
        read = (self.apps.read_namespaced_deployment if resource == DEPLOYMENTS
                else self.core.read_namespaced_service)
        try:
            return self.api.sanitize_for_serialization(read(name, NS))
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def exists(self, resource: str, name: str) -> bool:
        return self.get(resource, name) is not None

    def names(self, resource: str) -> set[str]:
        """Names of every object of ``resource`` in the test namespace."""
        lister = (self.apps.list_namespaced_deployment if resource == DEPLOYMENTS
                  else self.core.list_namespaced_service)
        return {o.metadata.name for o in lister(NS).items}


def play_controller(api: StandIn, name: str | None, stop: threading.Event) -> threading.Thread:
    """Mark the Deployment ``name`` ready once it exists, as the Deployment controller would; with
    ``name=None``, the first Deployment that appears in the namespace (a launcher picks its own name)."""

    def run() -> None:
        while not stop.is_set():
            try:
                target = name or next(iter(sorted(api.names(DEPLOYMENTS))), None)
                if target:
                    api.apps.patch_namespaced_deployment_status(
                        target, NS, {"status": {"replicas": 1, "readyReplicas": 1}})
                    return
            except k8s.ApiException:
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
