"""Container images for the real node, built here and imported, with no registry.

An image is an OCI image layout in a tarball (``oci-layout``, ``index.json``, content-addressed
blobs) that ``ctr images import`` reads; the name of each image is the
``io.containerd.image.name`` annotation of its entry in the index. The base layer is Debian's
statically linked busybox with a link for every applet; a test adds layers of its own files
with :func:`files_layer`.

Pods that need Python do not get it in an image: they run the project's own environment through
read-only hostPath mounts (:func:`python_mounts`). That is a device of the test stack, where the
node shares the host's filesystem; users' clusters run the images they build.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testenv.binaries import binary

BUSYBOX_IMAGE = "mlcd.test/busybox:1"
# The pod sandbox's image: busybox's sleep as the process that holds the pod's namespaces.
PAUSE_IMAGE = "mlcd.test/pause:1"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
PLATFORM = {"architecture": "amd64", "os": "linux"}


@dataclass(frozen=True)
class Image:
    """One image: a name (``registry/name:tag``), its layers (uncompressed tars) and config."""

    name: str
    layers: tuple[bytes, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: {"PATH": PATH})
    workdir: str = "/"


def _tar(add: Iterable[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in add:
            info, data = item if isinstance(item, tuple) else (item, None)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _dir(name: str, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    return info


def _file(name: str, data: bytes, mode: int) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def busybox_layer() -> bytes:
    """A root filesystem of busybox: /bin with every applet, /etc, and /lib links into /usr."""
    busybox = binary("busybox")
    data = busybox.read_bytes()
    if data[:4] != b"\x7fELF" or b"/lib64/ld-linux" in data[:4096]:
        raise RuntimeError(
            f"{busybox} is not statically linked: install Debian's busybox-static "
            "(it replaces busybox) or point MLCD_BUSYBOX at a static busybox"
        )
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = [
        _dir(d) for d in ("bin", "dev", "etc", "proc", "root", "run", "sys", "usr", "var")
    ]
    entries += [_dir("tmp", 0o1777), _dir("var/tmp", 0o1777)]
    # Debian's merged /usr, so a pod that mounts the host's /usr finds its libraries.
    entries += [_link("lib", "usr/lib"), _link("lib64", "usr/lib64"), _link("sbin", "bin")]
    entries.append(_file("bin/busybox", data, 0o755))
    entries += [_link(f"bin/{a}", "busybox") for a in applets if a != "busybox"]
    entries.append(
        _file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        )
    )
    entries.append(_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644))
    entries.append(_file("etc/nsswitch.conf", b"hosts: files dns\n", 0o644))
    return _tar(entries)


def files_layer(files: Mapping[str, bytes | Path], mode: int = 0o755) -> bytes:
    """A layer with ``files`` (path in the image -> content or a host file), parents included."""
    entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = []
    seen: set[str] = set()
    for target, content in sorted(files.items()):
        name = target.lstrip("/")
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            if parent not in seen:
                seen.add(parent)
                entries.append(_dir(parent))
        data = content.read_bytes() if isinstance(content, Path) else content
        entries.append(_file(name, data, mode))
    return _tar(entries)


def base_images() -> list[Image]:
    """The images every real node has: busybox, and the pod sandbox's image."""
    layer = busybox_layer()
    return [
        Image(BUSYBOX_IMAGE, (layer,), cmd=("sh",)),
        Image(PAUSE_IMAGE, (layer,), entrypoint=("/bin/sleep", "2147483647")),
    ]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_tarball(path: Path, images: Iterable[Image]) -> Path:
    """Write ``images`` as one OCI image layout tarball (shared layers stored once)."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, Any]:
        digest = _digest(data)
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    manifests = []
    for image in images:
        config: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in image.env.items()]}
        config["WorkingDir"] = image.workdir
        if image.entrypoint:
            config["Entrypoint"] = list(image.entrypoint)
        if image.cmd:
            config["Cmd"] = list(image.cmd)
        config_blob = json.dumps(
            {
                **PLATFORM,
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": [_digest(x) for x in image.layers]},
            },
            sort_keys=True,
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": {"mediaType": CONFIG, **blob(config_blob)},
                "layers": [{"mediaType": LAYER, **blob(layer)} for layer in image.layers],
            },
            sort_keys=True,
        ).encode()
        manifests.append(
            {
                "mediaType": MANIFEST,
                **blob(manifest),
                "platform": PLATFORM,
                "annotations": {
                    "io.containerd.image.name": image.name,
                    "org.opencontainers.image.ref.name": image.name.rsplit(":", 1)[-1],
                },
            }
        )
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
    index["manifests"] = manifests  # type: ignore[assignment]
    entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = [
        _file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644),
        _file("index.json", json.dumps(index, sort_keys=True).encode(), 0o644),
        _dir("blobs"),
        _dir("blobs/sha256"),
    ]
    entries += [
        _file(f"blobs/sha256/{digest.split(':')[1]}", data, 0o644) for digest, data in blobs.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_tar(entries))
    return path


# -- the project's Python in a pod -----------------------------------------------------------------
@dataclass(frozen=True)
class PythonMounts:
    """What a container needs to run the project's Python from the host, read-only."""

    python: str  # the interpreter's path, the same inside the container as on the host
    volumes: list[dict[str, Any]]
    volume_mounts: list[dict[str, Any]]


def python_mounts(repo: Path | None = None) -> PythonMounts:
    """hostPath mounts of /usr (the C libraries), the Python installation, the project's
    environment and the checkout (its editable installs), all read-only, at their host paths.
    """
    prefix = Path(sys.prefix).resolve()  # .venv may be a link into the project's cache
    repo = repo or Path(__file__).resolve().parents[2]
    paths = {
        "usr": Path("/usr"),
        "python-base": Path(sys.base_prefix).resolve(),
        "python-env": prefix,
        "checkout": repo.resolve(),
    }
    volumes = [{"name": name, "hostPath": {"path": str(path)}} for name, path in paths.items()]
    mounts = [
        {"name": name, "mountPath": str(path), "readOnly": True} for name, path in paths.items()
    ]
    return PythonMounts(str(prefix / "bin" / "python"), volumes, mounts)
