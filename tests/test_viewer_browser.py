"""End to end in a real browser: headless Chromium (Selenium + the system chromedriver) opens /viewer on a
running server while a test client streams frames through /v1/stream; the page must draw the detections
and the points and update its latency counter.

The models have fresh (untrained) weights, whose detections are degenerate (zero-height boxes along the
top edge), so the camera stage runs the real detector and then reports four known boxes in its place:
the page is checked against boxes whose pixels are predictable. Everything else (server, stream, hub,
LiDAR stage, timings) is real. A screenshot is kept in ``out/test-artifacts/`` (or
``$PERCEPTION_TEST_ARTIFACTS``).

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the PyPI package ``selenium``; skips
with the reason otherwise. Selenium is pointed at the system chromedriver, so it never downloads anything.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from perception.camera.boxes import Detection2D
from perception.client import RestClient
from perception.pipeline import Frame, Pipeline
from perception.runtime.detector import DetectionResult, Detector
from perception.service.server import serve_in_background
from perception.viz.draw import class_colour

from .test_pipeline import synthetic_image
from .test_viewer import models_dir, sample_points, settings_for, viewer_models

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
HAVE_SELENIUM = importlib.util.find_spec("selenium") is not None
MISSING = [
    name
    for name, present in (
        ("chromium (apt-get install chromium)", CHROMIUM),
        ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER),
        ("selenium (pip install selenium, in the [dev] extra)", HAVE_SELENIUM),
    )
    if not present
]
pytestmark = pytest.mark.skipif(bool(MISSING), reason="browser test needs " + ", ".join(MISSING))

ARTIFACTS = Path(
    os.environ.get("PERCEPTION_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "out" / "test-artifacts")
)


KNOWN_BOXES = [  # (class id, class, score, x1, y1, x2, y2) in pixels of the 1242 x 375 frame
    (1, "car", 0.91, 100.0, 150.0, 400.0, 330.0),
    (2, "pedestrian", 0.62, 700.0, 120.0, 760.0, 300.0),
    (3, "cyclist", 0.47, 900.0, 160.0, 1000.0, 320.0),
    (1, "car", 0.12, 1100.0, 200.0, 1180.0, 260.0),
]


class KnownBoxesDetector:
    """Runs the real detector (inference, timings, provider), then reports :data:`KNOWN_BOXES`."""

    def __init__(self, real: Detector) -> None:
        self.real = real

    def detect(self, image: np.ndarray) -> DetectionResult:
        result = self.real.detect(image)
        return dataclasses.replace(result, detections=[Detection2D(*box) for box in KNOWN_BOXES])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    seg, det = viewer_models(models_dir(tmp_path_factory))
    pipeline = Pipeline(seg, det, providers="cpu")
    assert pipeline.detector is not None
    pipeline.detector = KnownBoxesDetector(pipeline.detector)  # type: ignore[assignment]
    with serve_in_background(settings_for((seg, det)), pipeline) as svc:
        yield svc
    pipeline.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1200", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, script: str, what: str, timeout: float = 120.0) -> Any:
    """Poll ``return <script>`` in the page until it is truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"the viewer did not {what} within {timeout:.0f} s (page state: {state(driver)})")
        time.sleep(0.05)


def state(driver: Any) -> dict[str, Any]:
    return driver.execute_script(
        "const s = window.perceptionViewer; return s && {frames: s.frames, camera: s.cameraFrameId, "
        "lidar: s.lidarFrameId, latency: s.latencyFrameId, status: document.getElementById('status').textContent};"
    )


def pixel(driver: Any, canvas_id: str, col: int, row: int) -> list[int]:
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "return Array.from(c.getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data);",
        canvas_id,
        col,
        row,
    )


def count_colour(driver: Any, canvas_id: str, rgb: tuple[int, int, int]) -> int:
    """Opaque pixels of exactly ``rgb`` on a canvas."""
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let k = 0; k < d.length; k += 4) {"
        "  if (d[k] === arguments[1] && d[k + 1] === arguments[2] && d[k + 2] === arguments[3]"
        "      && d[k + 3] === 255) n++;"
        "}"
        "return n;",
        canvas_id,
        *rgb,
    )


def text(driver: Any, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent;", element_id)


def stream_one(server: Any, frame: Frame) -> dict[str, Any]:
    with RestClient(server.rest_url) as client:
        (answer,) = list(client.stream([frame]))
    assert answer["type"] == "result", answer
    return answer


def test_the_viewer_draws_streamed_frames_and_updates_its_latency(server, browser, tmp_path):
    browser.get(f"{server.rest_url}/viewer?min_score=0")
    wait_for(browser, "window.perceptionViewer && window.perceptionViewer.hello", "connect to /v1/viewer", 60)
    assert text(browser, "status") == "live"
    assert "camera: squeezedet.onnx" in text(browser, "models")

    # frame 1: camera + LiDAR through the stream endpoint
    first = stream_one(server, Frame("b-1", 1.0, image=synthetic_image(seed=11), points=sample_points()))
    drawn: Callable[[str], str] = lambda fid: (  # noqa: E731
        f"window.perceptionViewer.cameraFrameId === '{fid}' && window.perceptionViewer.lidarFrameId === '{fid}' "
        f"&& window.perceptionViewer.latencyFrameId === '{fid}'"
    )
    wait_for(browser, drawn("b-1"), "draw frame b-1")

    # detections: every one is drawn (min_score=0), the outline from the box's edges inwards (2 px at this
    # image height) in the class colour, the inside left clear, the "class score" tag above the corner
    detections = browser.execute_script("return window.perceptionViewer.drawnDetections;")
    assert [(d["class_name"], d["score"]) for d in detections] == sorted(
        [(b[1], b[2]) for b in KNOWN_BOXES], key=lambda t: t[1]
    ), "all drawn, lowest score first"
    for _, name, _, x1, y1, x2, y2 in KNOWN_BOXES:
        colour = [*class_colour(name), 255]
        mid_x, mid_y = int((x1 + x2) / 2), int((y1 + y2) / 2)
        assert pixel(browser, "camera-overlay", mid_x, int(y2) - 1) == colour, f"{name}: bottom edge"
        assert pixel(browser, "camera-overlay", int(x1), mid_y) == colour, f"{name}: left edge"
        assert pixel(browser, "camera-overlay", int(x2) - 1, mid_y) == colour, f"{name}: right edge"
        assert pixel(browser, "camera-overlay", int(x1), int(y1) - 3) == colour, f"{name}: tag"
        assert pixel(browser, "camera-overlay", mid_x, mid_y)[3] == 0, f"{name}: the inside stays clear"
        assert pixel(browser, "camera-overlay", int(x2) + 3, mid_y)[3] == 0, f"{name}: nothing right of the box"
    rows = browser.execute_script("return document.querySelectorAll('#detections tbody tr').length;")
    assert rows == min(50, len(detections))
    # the camera image under the overlay: the synthetic frame's sky (135, 180, 230) in its top-left corner
    sky = pixel(browser, "camera-image", 5, 5)
    assert np.abs(np.array(sky[:3]) - (135, 180, 230)).max() < 20 and sky[3] == 255

    # the point cloud: points of every predicted object class and the instances
    predicted = {k: v for k, v in first["class_counts"].items() if k != "unknown" and v > 0}
    for name in predicted:
        assert count_colour(browser, "bev", class_colour(name)) > 0, f"no {name} points drawn"
    instances = browser.execute_script("return window.perceptionViewer.drawnInstances.length;")
    assert instances == len(first["instances"])
    assert f"{len(first['instances'])} instances" in text(browser, "lidar-caption")

    # the latency counter shows this frame's total, then the next frame's
    shown = float(text(browser, "latency-total").split()[0])
    assert shown == pytest.approx(first["timings_ms"]["total"], abs=0.051)
    frames_before = int(text(browser, "frame-count"))
    second = stream_one(server, Frame("b-2", 2.0, image=synthetic_image(seed=12), points=sample_points()[:40_000]))
    wait_for(browser, drawn("b-2"), "draw frame b-2")
    assert int(text(browser, "frame-count")) == frames_before + 1
    shown = float(text(browser, "latency-total").split()[0])
    assert shown == pytest.approx(second["timings_ms"]["total"], abs=0.051)
    assert text(browser, "latency-frame") == "b-2" and text(browser, "latency-source") == "/v1/stream"
    stages = browser.execute_script(
        "return Array.from(document.querySelectorAll('#stages tbody tr'))"
        ".map(r => [r.cells[0].textContent, parseFloat(r.cells[1].textContent)]);"
    )
    assert {name for name, _ in stages} == set(second["timings_ms"])
    for name, ms in stages:
        assert ms == pytest.approx(second["timings_ms"][name], abs=0.051), name

    # the score slider redraws the boxes without a new frame
    browser.execute_script(
        "const s = document.getElementById('min-score'); s.value = '1'; s.dispatchEvent(new Event('input'));"
    )
    drawn_after = browser.execute_script("return window.perceptionViewer.drawnDetections.map(d => d.score);")
    assert drawn_after == [] and pixel(browser, "camera-overlay", 250, 329)[3] == 0
    browser.execute_script(
        "const s = document.getElementById('min-score'); s.value = '0.5'; s.dispatchEvent(new Event('input'));"
    )
    assert browser.execute_script("return window.perceptionViewer.drawnDetections.map(d => d.score);") == [0.62, 0.91]
    assert pixel(browser, "camera-overlay", 1140, 259)[3] == 0, "the 0.12 car is hidden"
    browser.execute_script(
        "const s = document.getElementById('min-score'); s.value = '0'; s.dispatchEvent(new Event('input'));"
    )

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for target in (tmp_path / "viewer.png", ARTIFACTS / "viewer.png"):
        assert browser.save_screenshot(str(target)) and target.stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
