"""deploy/ builds with kubectl kustomize and installs what the chart installs."""

from __future__ import annotations

from typing import Any

import pytest

from testenv.manifests import DEPLOY, find, kustomize, one

RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
# Each kustomize build and the chart values that install the same.
PAIRS = {
    "cluster-wide": (DEPLOY / "overlays" / "cluster-wide", [], "cluster-wide", []),
    "namespaced": (
        DEPLOY / "overlays" / "namespaced",
        [],
        None,
        ["watchNamespaces={team-a}"],
    ),
    "cluster-wide with peering": (
        DEPLOY / "overlays" / "cluster-wide",
        [DEPLOY / "components" / "peering"],
        None,
        ["peering.enabled=true"],
    ),
    "cluster-wide with monitoring": (
        DEPLOY / "overlays" / "cluster-wide",
        [DEPLOY / "components" / "monitoring"],
        "monitoring",
        [],
    ),
}
# A serving target's or an engine's component, in each overlay, and the chart's mode of it.
for _target in ("kserve", "kubeflow"):
    for _overlay, _sets in (("cluster-wide", []), ("namespaced", ["watchNamespaces={team-a}"])):
        PAIRS[f"{_overlay} with {_target}"] = (
            DEPLOY / "overlays" / _overlay,
            [DEPLOY / "components" / _target],
            _target,
            _sets,
        )


def rbac(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], Any]:
    """(kind, namespace, name) -> each rule as a set of (group, resource, verb, names), or the
    binding; names are the rule's resourceNames (empty: every object of the resource)."""
    out: dict[tuple[str, str, str], Any] = {}
    for doc in docs:
        if doc["kind"] not in RBAC_KINDS:
            continue
        key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
        if "rules" in doc:
            out[key] = {
                (group, resource, verb, tuple(sorted(rule.get("resourceNames", []))))
                for rule in doc["rules"]
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
            }
        else:
            out[key] = (doc["roleRef"], doc["subjects"])
    return out


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def unlabelled(doc: dict[str, Any]) -> dict[str, Any]:
    """A document without labels (kustomize and helm label differently) and namespace."""
    meta = {k: v for k, v in doc["metadata"].items() if k not in ("labels", "namespace")}
    return {**doc, "metadata": meta}


def both(render, pair: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What kustomize builds and what the chart renders, for one of PAIRS."""
    overlay, components, mode, sets = PAIRS[pair]
    return kustomize(overlay, components), render(mode, *sets)


@pytest.mark.parametrize("pair", PAIRS)
def test_kustomize_renders_the_rbac_of_the_chart(render, pair):
    built, chart = both(render, pair)
    assert rbac(built) == rbac(chart)
    assert rbac(built), "no RBAC rendered"


@pytest.mark.parametrize("pair", PAIRS)
def test_kustomize_runs_the_operator_as_the_chart_does(render, pair):
    built, chart = both(render, pair)
    assert pod_spec(built) == pod_spec(chart)
    assert (
        one(built, "Deployment")["spec"]["strategy"] == one(chart, "Deployment")["spec"]["strategy"]
    )
    for kind in ("ServiceAccount", "Service", "PersistentVolumeClaim"):
        assert unlabelled(one(built, kind)) == unlabelled(one(chart, kind)), kind
    for kind in ("CustomResourceDefinition", "ClusterKopfPeering"):
        assert sorted(d["metadata"]["name"] for d in find(built, kind)) == sorted(
            d["metadata"]["name"] for d in find(chart, kind)
        )


def test_the_namespaced_overlay_grants_nothing_cluster_wide_but_crds():
    built = rbac(kustomize(DEPLOY / "overlays" / "namespaced"))
    cluster = [k for k in built if k[0] == "ClusterRole"]
    assert [built[k] for k in cluster] == [
        {("apiextensions.k8s.io", "customresourcedefinitions", v, ()) for v in ("list", "watch")}
    ]
    assert ("", "secrets", "get", ()) in built[("Role", "team-a", "mlcd-operator")]


@pytest.mark.parametrize("overlay", ["cluster-wide", "namespaced"])
def test_the_kserve_component_grants_its_rules_where_pipelines_are_watched(overlay):
    """Where the watched namespaces' rules are (the ClusterRole or the Role in team-a), and
    KServe's ConfigMap by name in KServe's namespace; nothing of it anywhere else."""
    plain = rbac(kustomize(DEPLOY / "overlays" / overlay))
    built = rbac(kustomize(DEPLOY / "overlays" / overlay, [DEPLOY / "components" / "kserve"]))
    holder = {
        "cluster-wide": ("ClusterRole", "", "mlcd-operator"),
        "namespaced": ("Role", "team-a", "mlcd-operator"),
    }[overlay]
    added = {k: built[k] - plain.get(k, set()) for k in built if k[0] in ("Role", "ClusterRole")}
    assert {k: v for k, v in added.items() if v} == {
        holder: {
            ("serving.kserve.io", "inferenceservices", v, ())
            for v in ("get", "list", "create", "patch", "delete")
        }
        | {
            ("gateway.networking.k8s.io", "httproutes", v, ())
            for v in ("get", "create", "patch", "delete")
        }
        | {
            ("", r, v, ())
            for r in ("secrets", "serviceaccounts")
            for v in ("create", "patch", "delete")
        }
        | {("mlcd.io", "modelpipelines/finalizers", "update", ())},
        ("Role", "kserve", "mlcd-operator-kserve"): {
            ("", "configmaps", "get", ("inferenceservice-config",))
        },
    }


def test_the_monitoring_component_is_generated_from_the_chart(generate):
    from testenv.binaries import binary

    expected = generate.monitoring_manifests(str(binary("helm")))
    folder = DEPLOY / "components" / "monitoring"
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    for name, text in expected.items():
        assert (folder / name).read_text() == text, f"{name} drifted: run make docs"
