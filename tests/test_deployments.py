"""deployments.yaml points at real flows with parameters they accept."""

from __future__ import annotations

import importlib
import inspect

import yaml
from prefect import Flow

from tests.conftest import REPO


def test_every_deployment_entrypoint_is_a_flow_with_matching_parameters():
    spec = yaml.safe_load((REPO / "deployments.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        module_path, name = dep["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert isinstance(flow, Flow), dep["name"]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(dep.get("parameters", {})) <= accepted, dep["name"]
        for schedule in dep.get("schedules", []):
            assert len(schedule["cron"].split()) == 5
