"""Fixtures of the GRPO unit tests: ``api``, an in-memory Kubernetes API (see kube_standin.py for why)."""

import pytest

from tests.unit.grpo.kube_standin import StandIn


@pytest.fixture()
def api():
    stand_in = StandIn()
    yield stand_in
    stand_in.close()
