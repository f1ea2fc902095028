"""The API server is real: validation, subresources, conflicts, watches, finalizers, GC, RBAC."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from stack.conftest import GROUP, PLURAL, VERSION, widget
from testenv.cluster import Cluster

pytestmark = pytest.mark.usefixtures("widgets_crd")


def eventually(check: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {what}")
        time.sleep(0.1)


def refused(call: Callable[[], object]) -> ApiException:
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value


def test_schema_violation_is_refused_with_422_naming_the_field(
    api: client.ApiClient, namespace: str
) -> None:
    custom = client.CustomObjectsApi(api)
    error = refused(
        lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, widget("bad-size", size="huge")
        )
    )
    assert error.status == 422
    causes = json.loads(error.body)["details"]["causes"]
    assert any(c["field"] == "spec.size" and "huge" in c["message"] for c in causes), causes


def test_cel_rule_violation_is_refused_with_422_naming_the_field(
    api: client.ApiClient, namespace: str
) -> None:
    custom = client.CustomObjectsApi(api)
    error = refused(
        lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, widget("inverted", minReplicas=5, maxReplicas=2)
        )
    )
    assert error.status == 422
    causes = json.loads(error.body)["details"]["causes"]
    assert {"field": "spec.minReplicas", "reason": "FieldValueInvalid"}.items() <= causes[0].items()
    assert "minReplicas must not exceed maxReplicas" in causes[0]["message"]


def test_unknown_fields_are_pruned_and_defaults_applied(
    api: client.ApiClient, namespace: str
) -> None:
    custom = client.CustomObjectsApi(api)
    body = widget("pruned")
    body["spec"]["colour"] = "red"  # type: ignore[index]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "pruned")
    assert stored["spec"] == {"size": "small", "minReplicas": 1, "maxReplicas": 1}


def test_status_through_the_main_resource_is_ignored(api: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api)
    body = widget("status")
    body["status"] = {"phase": "Smuggled"}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert "status" not in created

    created["status"] = {"phase": "StillSmuggled"}
    created["spec"]["size"] = "large"
    updated = custom.replace_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "status", created
    )
    assert updated["spec"]["size"] == "large"
    assert "status" not in updated

    updated["status"] = {"phase": "Ready"}
    custom.replace_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "status", updated
    )
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "status")
    assert stored["status"] == {"phase": "Ready"}
    assert stored["spec"]["size"] == "large"


def test_stale_resource_version_gets_409(api: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("race"))
    first = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "race")
    second = json.loads(json.dumps(first))

    first["spec"]["size"] = "large"
    custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "race", first)
    second["spec"]["maxReplicas"] = 3
    error = refused(
        lambda: custom.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "race", second
        )
    )
    assert error.status == 409
    assert json.loads(error.body)["reason"] == "Conflict"


def test_watch_sees_added_modified_deleted(api: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api)
    start = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("watched"))
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "watched", {"spec": {"size": "large"}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "watched")

    seen: list[tuple[str, str]] = []
    stream = watch.Watch().stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        resource_version=start["metadata"]["resourceVersion"],
        timeout_seconds=10,
    )
    for event in stream:
        seen.append((event["type"], event["object"]["spec"]["size"]))
        if event["type"] == "DELETED":
            break
    assert seen == [("ADDED", "small"), ("MODIFIED", "large"), ("DELETED", "large")]


def test_finalizer_holds_deletion_until_removed(api: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api)
    body = widget("held")
    body["metadata"]["finalizers"] = ["stack.mlcd.io/hold"]  # type: ignore[index]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")

    held = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")
    assert held["metadata"]["deletionTimestamp"]
    time.sleep(1)
    assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "held", {"metadata": {"finalizers": None}}
    )
    error = refused(
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")
    )
    assert error.status == 404


def test_deleting_an_owner_deletes_what_it_owns(api: client.ApiClient, namespace: str) -> None:
    # A built-in owner: the garbage collector learns about a new CRD only at its next
    # discovery sync (every 30 s), which would make this test slow, not more real.
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for name in ("owned-1", "owned-2"):
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": name, "ownerReferences": [reference]}}
        )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "unowned"}})

    # Foreground: the owner stays (with a finalizer) until the collector removed its dependents.
    core.delete_namespaced_config_map(
        "owner", namespace, body=client.V1DeleteOptions(propagation_policy="Foreground")
    )

    def names() -> set[str]:
        return {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}

    eventually(
        lambda: not names() & {"owner", "owned-1", "owned-2"},
        timeout=30,
        what="the garbage collector deletes the owner's dependents, then the owner",
    )
    assert "unowned" in names()


def test_service_account_without_binding_gets_403(
    apiserver: Cluster, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "robot"}})
    with apiserver.impersonate(namespace, "robot") as robot_api:
        robot = client.CoreV1Api(robot_api)
        error = refused(lambda: robot.list_namespaced_config_map(namespace))
        assert error.status == 403
        assert f"system:serviceaccount:{namespace}:robot" in json.loads(error.body)["message"]

        # The same client succeeds once RBAC grants it: the 403 came from authorization.
        rbac = client.RbacAuthorizationV1Api(api)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "read-config"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "robot-reads-config"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-config",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": namespace}],
            },
        )

        def allowed() -> bool:
            try:
                robot.list_namespaced_config_map(namespace)
            except ApiException as exc:
                if exc.status == 403:
                    return False
                raise
            return True

        eventually(allowed, timeout=15, what="the RoleBinding takes effect")
        assert refused(lambda: robot.list_namespaced_secret(namespace)).status == 403


def test_kubectl_apply(
    apiserver: Cluster, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    version = json.loads(apiserver.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.34.4"
    assert version["clientVersion"]["gitVersion"] == "v1.34.4"

    manifest = tmp_path / "objects.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: blue}\n"
        "---\n"
        f"apiVersion: {GROUP}/{VERSION}\nkind: Widget\nmetadata: {{name: applied}}\n"
        "spec: {size: large, maxReplicas: 4}\n"
    )
    out = apiserver.kubectl("apply", "-n", namespace, "-f", str(manifest)).stdout
    assert "configmap/settings created" in out
    assert "widget.stack.mlcd.io/applied created" in out

    manifest.write_text(manifest.read_text().replace("mode: blue", "mode: green"))
    out = apiserver.kubectl("apply", "-n", namespace, "-f", str(manifest)).stdout
    assert "configmap/settings configured" in out
    assert "widget.stack.mlcd.io/applied unchanged" in out

    assert client.CoreV1Api(api).read_namespaced_config_map("settings", namespace).data == {
        "mode": "green"
    }
    applied = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "applied"
    )
    assert applied["spec"] == {"size": "large", "minReplicas": 1, "maxReplicas": 4}

    refused_apply = apiserver.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        check=False,
        input=f"apiVersion: {GROUP}/{VERSION}\nkind: Widget\nmetadata: {{name: bad}}\n"
        "spec: {size: medium}\n",
    )
    assert refused_apply.returncode != 0
    assert "spec.size" in refused_apply.stderr
