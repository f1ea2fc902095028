"""A component that cannot start is named, with its log, and nothing is left running."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from testenv.proc import ComponentError
from testenv.stack import Stack


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


def test_failed_start_names_the_component_and_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A controller manager that cannot run: it prints why and exits, as a broken build would.
    # etcd, kube-apiserver and Prometheus are real and already up when it fails.
    broken = tmp_path / "kube-controller-manager-broken"
    broken.write_text("#!/bin/sh\necho 'cannot load the kubeconfig' >&2\nexit 3\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("MLCD_KUBE_CONTROLLER_MANAGER", str(broken))

    root = tmp_path / "stack"
    stack = Stack(root)
    with pytest.raises(ComponentError) as caught:
        stack.up("prometheus", "apiserver")
    error = caught.value
    assert error.component == "kube-controller-manager"
    assert "exited with code 3" in str(error)
    assert "cannot load the kubeconfig" in str(error)
    assert {"etcd", "kube-apiserver", "prometheus"} <= set(stack.ready_after)
    assert not stack.components()
    assert processes_mentioning(str(root)) == []

    # The failure is remembered: asking again raises at once instead of retrying.
    with pytest.raises(ComponentError) as again:
        stack.up("apiserver")
    assert again.value is error
    stack.stop()
