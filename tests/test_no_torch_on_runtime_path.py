"""The runtime (CLI, lidar, io, camera, runtime, service, ros) must run without torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import perception

RUNTIME_PACKAGES = ("lidar", "io", "camera", "runtime", "service", "ros", "sim", "viz", "evaluation")


def runtime_modules() -> list[str]:
    names = ["perception", "perception.cli", "perception.bench"]
    for info in pkgutil.walk_packages(perception.__path__, "perception."):
        top = info.name.split(".")[1]
        if top in RUNTIME_PACKAGES:
            names.append(info.name)
    return names


def test_runtime_modules_do_not_import_torch():
    modules = runtime_modules()
    assert "perception.lidar.projection" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'perception.training'))\n"
        "bad += sorted(m for m in sys.modules if m.startswith('perception.training'))\n"
        "print(','.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"runtime imported: {res.stdout.strip()}"
