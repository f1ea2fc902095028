"""A fake of the Kubeflow Pipelines v2beta1 REST API (its server cannot be built here).

Every request body is checked against the ``kfp-server-api`` models the KFP client is
generated from, and a submitted pipeline spec against the ``kfp-pipeline-spec`` protobuf the
API server parses it into, so a request KFP would refuse is refused here (400) and fails the
test. A created run is executed by running the submitted IR's own components with
``kfp.local`` on this machine (``fakes.kfp_runner``), in a process group of its own;
``:terminate`` stops that group. Faults: :meth:`FakeKFP.fail` answers the next requests
matching a method and path with an error, before or after doing the work.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

API = "/apis/v2beta1"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED")


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_model(model: str, body: Any, path: str = "") -> None:
    """``body`` (JSON) fits the kfp-server-api model ``model``: no unknown fields, types right."""
    import kfp_server_api

    cls = getattr(kfp_server_api, model)
    if not isinstance(body, dict):
        raise Refused(400, f"{path or model}: expected an object")
    by_json = {v: k for k, v in cls.attribute_map.items()}
    for key, value in body.items():
        if key not in by_json:
            raise Refused(400, f"{path or model}: unknown field {key!r}")
        check_type(cls.openapi_types[by_json[key]], value, f"{path}.{key}")


def check_type(kind: str, value: Any, path: str) -> None:
    if value is None:
        return
    simple = {"str": str, "bool": bool, "int": int, "float": (int, float), "object": object}
    if kind in simple:
        if not isinstance(value, simple[kind]) or (kind == "int" and isinstance(value, bool)):
            raise Refused(400, f"{path}: expected {kind}")
    elif kind == "datetime":
        if not isinstance(value, str):
            raise Refused(400, f"{path}: expected a timestamp")
    elif kind.startswith("list["):
        if not isinstance(value, list):
            raise Refused(400, f"{path}: expected a list")
        for i, item in enumerate(value):
            check_type(kind[5:-1], item, f"{path}[{i}]")
    elif kind.startswith("dict("):
        if not isinstance(value, dict):
            raise Refused(400, f"{path}: expected a map")
        inner = kind[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            check_type(inner, item, f"{path}.{key}")
    else:
        import kfp_server_api

        cls = getattr(kfp_server_api, kind)
        allowed = getattr(cls, "allowable_values", None) or [
            v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)
        ]
        if isinstance(value, str) and allowed:
            if value not in allowed:
                raise Refused(400, f"{path}: {value!r} is not a {kind}")
        else:
            check_model(kind, value, path)


def check_pipeline_spec(spec: Any, parameters: dict[str, Any]) -> dict[str, Any]:
    """The spec parses as KFP's PipelineSpec proto; the parameters are its root inputs."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    if not isinstance(spec, dict):
        raise Refused(400, "pipeline_spec: expected an object")
    pipeline = spec.get("pipeline_spec", spec) if "platform_spec" in spec else spec
    try:
        proto = json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as exc:
        raise Refused(400, f"pipeline_spec: {exc}") from exc
    inputs = proto.root.input_definitions.parameters
    for name, value in parameters.items():
        if name not in inputs:
            raise Refused(400, f"runtime_config.parameters: {name!r} is not a pipeline input")
        if inputs[name].parameter_type == pipeline_spec_pb2.ParameterType.STRING and not (
            isinstance(value, str)
        ):
            raise Refused(400, f"runtime_config.parameters.{name}: expected a string")
    for name, definition in inputs.items():
        if name not in parameters and not definition.is_optional:
            raise Refused(400, f"runtime_config.parameters: {name!r} is required")
    return dict(pipeline)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fault:
    method: str
    pattern: str
    status: int
    count: int
    after: bool  # do the work, then answer the error (a lost answer)


@dataclass
class FakeRun:
    body: dict[str, Any]
    folder: pathlib.Path
    process: subprocess.Popen[bytes] | None = None
    cancelled: bool = False


@dataclass
class FakeKFP:
    """The fake API on 127.0.0.1; ``env`` is given to the processes that execute runs."""

    root: pathlib.Path
    env: dict[str, str] = field(default_factory=dict)
    namespace: str = "kubeflow"
    #: When set, a request without ``Authorization: Bearer <token>`` is refused (401).
    token: str | None = None

    def __post_init__(self) -> None:
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, FakeRun] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeKFP:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for run in list(self.runs.values()):
            self._kill(run)

    def fail(
        self, method: str, pattern: str, status: int = 503, count: int = 1, after: bool = False
    ) -> None:
        """The next ``count`` requests ``method`` on a path matching ``pattern`` get ``status``."""
        with self.lock:
            self.faults.append(Fault(method, pattern, status, count, after))

    def created_runs(self) -> list[dict[str, Any]]:
        return [r.body for r in self.runs.values()]

    def wait(self, run_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.runs[run_id].body["state"]
            if state in TERMINAL:
                return str(state)
            time.sleep(0.2)
        raise TimeoutError(f"fake KFP run {run_id} still {self.runs[run_id].body['state']}")

    def log(self, run_id: str) -> str:
        path = self.runs[run_id].folder / "run.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    # -- the API ---------------------------------------------------------------------------
    def handle(
        self, method: str, url: str, body: Any, authorization: str | None = None
    ) -> tuple[int, Any]:
        if self.token is not None and authorization != f"Bearer {self.token}":
            return 401, {"error": "unauthenticated", "message": "no valid bearer token"}
        parsed = urlparse(url)
        path, query = parsed.path, {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        with self.lock:
            self.requests.append((method, path))
            fault = next(
                (f for f in self.faults if f.method == method and re.search(f.pattern, path)),
                None,
            )
            if fault is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
        if fault is not None and not fault.after:
            return fault.status, {"error": "injected", "message": "injected by the test"}
        try:
            answer = self._route(method, path, query, body)
        except Refused as exc:
            return exc.status, {"error": str(exc), "message": str(exc), "code": 3}
        if fault is not None:
            return fault.status, {"error": "injected", "message": "answer lost (injected)"}
        return 200, answer

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        if method == "GET" and path == f"{API}/healthz":
            return {"multi_user": False}
        if path == f"{API}/experiments":
            if method == "POST":
                return self._create_experiment(body)
            return self._list("experiments", list(self.experiments.values()), query)
        if method == "GET" and path.startswith(f"{API}/experiments/"):
            found = self.experiments.get(path.rsplit("/", 1)[1])
            if found is None:
                raise Refused(404, "experiment not found")
            return found
        if path == f"{API}/runs":
            if method == "POST":
                return self._create_run(body)
            runs = [r.body for r in self.runs.values()]
            if query.get("experiment_id"):
                runs = [r for r in runs if r["experiment_id"] == query["experiment_id"]]
            return self._list("runs", runs, query)
        match = re.fullmatch(rf"{API}/runs/([^/:]+)(:terminate)?", path)
        if match:
            run = self.runs.get(match.group(1))
            if run is None:
                raise Refused(404, f"run {match.group(1)} not found")
            if match.group(2) and method == "POST":
                self._terminate(run)
                return {}
            return run.body
        raise Refused(404, f"no route {method} {path}")

    def _list(self, kind: str, items: list[dict[str, Any]], query: dict[str, str]) -> Any:
        if query.get("namespace", self.namespace) != self.namespace and kind == "runs":
            return {}
        items = [i for i in items if _matches(i, query.get("filter"))]
        size = int(query.get("page_size") or 20)
        start = int(query.get("page_token") or 0)
        page = items[start : start + size]
        answer: dict[str, Any] = {kind: page, "total_size": len(items)}
        if start + size < len(items):
            answer["next_page_token"] = str(start + size)
        return answer

    def _create_experiment(self, body: Any) -> dict[str, Any]:
        check_model("V2beta1Experiment", body)
        if not body.get("display_name"):
            raise Refused(400, "experiment: display_name is required")
        if any(e["display_name"] == body["display_name"] for e in self.experiments.values()):
            raise Refused(409, f"experiment {body['display_name']!r} exists")
        created = {
            **body,
            "experiment_id": str(uuid.uuid4()),
            "created_at": now(),
            "storage_state": "AVAILABLE",
        }
        self.experiments[created["experiment_id"]] = created
        return created

    def _create_run(self, body: Any) -> dict[str, Any]:
        check_model("V2beta1Run", body)
        for output_only in ("run_id", "state", "created_at", "finished_at", "run_details"):
            if body.get(output_only) is not None:
                raise Refused(400, f"run: {output_only} is set by the server")
        if not body.get("display_name"):
            raise Refused(400, "run: display_name is required")
        if body.get("experiment_id") not in self.experiments:
            raise Refused(400, f"run: experiment {body.get('experiment_id')!r} does not exist")
        if not body.get("pipeline_spec"):
            raise Refused(400, "run: pipeline_spec or a pipeline version is required")
        parameters = (body.get("runtime_config") or {}).get("parameters") or {}
        spec = check_pipeline_spec(body["pipeline_spec"], parameters)
        run_id = str(uuid.uuid4())
        created = {**body, "run_id": run_id, "state": "PENDING", "created_at": now()}
        folder = self.root / run_id
        (folder / "tmp").mkdir(parents=True)
        (folder / "pipeline.yaml").write_text(yaml.safe_dump(spec))
        (folder / "parameters.json").write_text(json.dumps(parameters))
        run = FakeRun(created, folder)
        self.runs[run_id] = run
        threading.Thread(target=self._execute, args=(run,), daemon=True).start()
        return created

    def _execute(self, run: FakeRun) -> None:
        tests = pathlib.Path(__file__).resolve().parent.parent
        env = {
            **os.environ,
            **self.env,
            "TMPDIR": str(run.folder / "tmp"),
            "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
        }
        with self.lock:
            if run.cancelled:
                run.body.update(state="CANCELED", finished_at=now())
                return
            with (run.folder / "run.log").open("ab") as log:
                run.process = subprocess.Popen(
                    [sys.executable, "-m", "fakes.kfp_runner", str(run.folder)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                    cwd=run.folder,
                )
            run.body["state"] = "RUNNING"
        code = run.process.wait()
        with self.lock:
            state = "CANCELED" if run.cancelled else "SUCCEEDED" if code == 0 else "FAILED"
            run.body.update(state=state, finished_at=now())
            if state == "FAILED":
                error = run.folder / "error.txt"
                message = error.read_text() if error.is_file() else f"exit {code}"
                run.body["error"] = {"code": 2, "message": message[:500]}

    def _terminate(self, run: FakeRun) -> None:
        with self.lock:
            if run.body["state"] in TERMINAL:
                return
            run.cancelled = True
            run.body["state"] = "CANCELING"
            process = run.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)

    def _kill(self, run: FakeRun) -> None:
        process = run.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _matches(item: dict[str, Any], text: str | None) -> bool:
    """KFP's filter (a JSON Filter proto): EQUALS and IS_SUBSTRING on string fields."""
    if not text:
        return True
    for predicate in json.loads(text).get("predicates", []):
        key, op = predicate["key"], predicate["operation"]
        want = predicate.get("string_value", "")
        have = str(item.get(key, ""))
        if op == "EQUALS" and have != want:
            return False
        if op == "IS_SUBSTRING" and want not in have:
            return False
        if op not in ("EQUALS", "IS_SUBSTRING"):
            raise Refused(400, f"filter: operation {op} is not supported by this fake")
    return True


def _handler(fake: FakeKFP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                status, answer = 400, {"error": "request body is not JSON"}
            else:
                status, answer = fake.handle(
                    method, self.path, body, self.headers.get("Authorization")
                )
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
