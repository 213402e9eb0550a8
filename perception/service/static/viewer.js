// The perception live viewer: subscribes to the WebSocket /v1/viewer and draws every frame it gets.
// Plain JavaScript and canvas, no dependencies (works offline). Protocol: perception/service/viewer.py.
// Units: detection boxes in pixels of the original camera image; points and instance boxes in metres in
// the LiDAR frame (x forward, y left, z up); timings in milliseconds.
(function () {
  "use strict";

  const CLASS_RGB = {
    unknown: [110, 110, 110],
    car: [40, 110, 255],
    pedestrian: [235, 50, 50],
    cyclist: [245, 200, 40],
  };
  const LABEL_NAMES = ["unknown", "car", "pedestrian", "cyclist"];
  const UNKNOWN_POINT = [95, 98, 104];
  const BACKGROUND = "rgb(16, 18, 22)";
  const STAGES = [
    "camera.preprocess", "camera.inference", "camera.postprocess", "camera",
    "lidar.projection", "lidar.inference", "lidar.unprojection", "lidar.clustering", "lidar", "total",
  ];
  const DEFAULT_VIEW = { metresPerPixel: 0.1, centreX: 25, centreY: 0 };  // 72 m square, 10 m behind to 61 m ahead

  const params = new URLSearchParams(window.location.search);
  const $ = (id) => document.getElementById(id);

  // What the page shows, for operators' consoles and for tests: frame ids are set after the drawing.
  const state = {
    frames: 0,
    skipped: 0,
    lastSeq: 0,
    last: null,
    hello: null,
    minScore: clamp(parseFloat(params.get("min_score") ?? "0.4"), 0, 1, 0.4),
    cameraHeader: null,
    cameraFrameId: null,
    lidarHeader: null,
    lidarPoints: null,
    lidarFrameId: null,
    latencyFrameId: null,
    drawnDetections: [],
    drawnInstances: [],
    totals: [],
    arrivals: [],
    view: Object.assign({}, DEFAULT_VIEW),
  };
  window.perceptionViewer = state;

  function clamp(value, lo, hi, fallback) {
    return Number.isFinite(value) ? Math.min(hi, Math.max(lo, value)) : fallback;
  }

  function rgb(c, alpha) {
    return alpha === undefined ? `rgb(${c[0]}, ${c[1]}, ${c[2]})` : `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${alpha})`;
  }

  function classColour(name) {
    return CLASS_RGB[name] || [255, 255, 255];
  }

  function fmt(value, digits) {
    return Number.isFinite(value) ? value.toFixed(digits) : "–";
  }

  // --- connection --------------------------------------------------------------------------------

  function viewerUrl() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const base = window.location.pathname.replace(/viewer\/?$/, "");
    let url = `${scheme}//${window.location.host}${base}v1/viewer`;
    const key = params.get("api_key");
    if (key) url += `?api_key=${encodeURIComponent(key)}`;
    return url;
  }

  function setStatus(text, kind) {
    const el = $("status");
    el.textContent = text;
    el.className = `status ${kind}`;
  }

  function connect() {
    setStatus("connecting", "connecting");
    const ws = new WebSocket(viewerUrl());
    ws.binaryType = "arraybuffer";
    ws.onopen = () => setStatus("live", "live");
    ws.onmessage = (event) => {
      if (typeof event.data === "string") onText(event.data);
      else onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (event.code === 1008) {
        setStatus("refused: missing or wrong API key (add ?api_key=... to this page's address)", "closed");
        return;
      }
      setStatus("disconnected, retrying", "closed");
      window.setTimeout(connect, 2000);
    };
  }

  function onText(text) {
    const message = JSON.parse(text);
    if (message.type !== "hello") return;
    state.hello = message;
    $("models").textContent = (message.models || [])
      .map((m) => `${m.stage}: ${m.name}${m.loaded ? ` (${(m.providers || [])[0] || "?"})` : " (not loaded)"}`)
      .join(" · ");
  }

  function onFrame(buffer) {
    const view = new DataView(buffer);
    const headerLength = view.getUint32(0, true);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headerLength)));
    state.frames += 1;
    if (state.lastSeq && header.seq > state.lastSeq + 1) state.skipped += header.seq - state.lastSeq - 1;
    state.lastSeq = header.seq;
    state.last = header;
    const now = performance.now();
    state.arrivals.push(now);
    while (state.arrivals.length && now - state.arrivals[0] > 5000) state.arrivals.shift();
    if (header.points) {
      const points = new Float32Array(buffer, header.points.offset, header.points.count * 4);
      state.lidarHeader = header;
      state.lidarPoints = points;
      drawLidar();
    }
    if (header.image) {
      const bytes = new Uint8Array(buffer, header.image.offset, header.image.size);
      drawCamera(header, new Blob([bytes], { type: "image/jpeg" }));
    }
    updateLatency(header);
    updateCounters();
  }

  function updateCounters() {
    $("frame-count").textContent = String(state.frames);
    $("skipped-count").textContent = String(state.skipped);
    const a = state.arrivals;
    const rate = a.length > 1 ? ((a.length - 1) * 1000) / (a[a.length - 1] - a[0]) : 0;
    $("rate").textContent = fmt(rate, 1);
  }

  // --- camera ------------------------------------------------------------------------------------

  let cameraToken = 0;

  function drawCamera(header, blob) {
    const token = ++cameraToken;
    createImageBitmap(blob).then((bitmap) => {
      if (token !== cameraToken) {  // a newer frame's image is on its way
        bitmap.close();
        return;
      }
      const size = header.image_size || [bitmap.width, bitmap.height];
      const base = $("camera-image");
      const overlay = $("camera-overlay");
      for (const canvas of [base, overlay]) {
        if (canvas.width !== size[0] || canvas.height !== size[1]) {
          canvas.width = size[0];
          canvas.height = size[1];
        }
      }
      base.getContext("2d").drawImage(bitmap, 0, 0, size[0], size[1]);
      bitmap.close();
      state.cameraHeader = header;
      drawOverlay();
    }).catch((err) => {
      $("camera-caption").textContent = `frame ${header.frame_id}: cannot decode the image (${err})`;
    });
  }

  // Boxes from the lowest score up (the most confident on top), outlines drawn inwards like the Python
  // renderer (perception/viz/camera_view.py), each with a "class score" tag above its top-left corner.
  function drawOverlay() {
    const header = state.cameraHeader;
    if (!header) return;
    const canvas = $("camera-overlay");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const detections = (header.detections || [])
      .filter((d) => d.score >= state.minScore)
      .sort((a, b) => a.score - b.score);
    const lineWidth = Math.max(2, Math.round(canvas.height / 190));
    const fontPx = Math.max(10, Math.min(28, Math.round(canvas.height / 29)));
    ctx.font = `${fontPx}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    for (const d of detections) {
      const colour = classColour(d.class_name);
      const w = Math.max(d.x2 - d.x1, lineWidth);
      const h = Math.max(d.y2 - d.y1, lineWidth);
      ctx.strokeStyle = rgb(colour);
      ctx.lineWidth = lineWidth;
      ctx.strokeRect(d.x1 + lineWidth / 2, d.y1 + lineWidth / 2, w - lineWidth, h - lineWidth);
      const text = `${d.class_name} ${d.score.toFixed(2)}`;
      const tagW = ctx.measureText(text).width + 4;
      const tagH = fontPx + 3;
      const top = d.y1 - tagH - 1 >= 0 ? d.y1 - tagH - 1 : d.y1 + lineWidth;
      ctx.fillStyle = rgb(colour);
      ctx.fillRect(d.x1, top, tagW, tagH);
      ctx.fillStyle = "rgb(0, 0, 0)";
      ctx.fillText(text, d.x1 + 2, top + 1);
    }
    state.drawnDetections = detections;
    const total = (header.detections || []).length;
    $("camera-caption").textContent =
      `frame ${header.frame_id} · ${detections.length} of ${total} detections with score ≥ ${state.minScore.toFixed(2)}` +
      ` · ${header.image_size ? header.image_size.join(" × ") : ""} px · via ${header.source}`;
    const rows = detections.slice().reverse().slice(0, 50).map((d) => {
      const box = [d.x1, d.y1, d.x2, d.y2].map((v) => v.toFixed(0)).join(", ");
      return `<tr><td><span class="swatch" style="background:${rgb(classColour(d.class_name))}"></span>` +
        `${escapeHtml(d.class_name)}</td><td class="num">${d.score.toFixed(2)}</td><td>${box}</td></tr>`;
    });
    $("detections").tBodies[0].innerHTML = rows.join("");
    state.cameraFrameId = header.frame_id;
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  // --- bird's-eye view ---------------------------------------------------------------------------

  // (col, row) canvas pixels of LiDAR (x, y) metres: +x up, +y left, the view centred on (centreX, centreY).
  function toPixel(x, y, canvas) {
    const v = state.view;
    return [canvas.width / 2 - (y - v.centreY) / v.metresPerPixel, canvas.height / 2 - (x - v.centreX) / v.metresPerPixel];
  }

  let pointLayer = null;

  function drawLidar() {
    const header = state.lidarHeader;
    const points = state.lidarPoints;
    if (!header || !points) return;
    const canvas = $("bev");
    const ctx = canvas.getContext("2d");
    const W = canvas.width;
    const H = canvas.height;
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, W, H);
    // range rings every 10 m around the sensor
    const [ox, oy] = toPixel(0, 0, canvas);
    ctx.strokeStyle = "rgb(52, 56, 64)";
    ctx.fillStyle = "rgb(52, 56, 64)";
    ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif";
    for (let r = 10; r <= 200; r += 10) {
      const radius = r / state.view.metresPerPixel;
      if (radius > 2 * Math.max(W, H) + Math.hypot(ox - W / 2, oy - H / 2)) break;
      ctx.beginPath();
      ctx.arc(ox, oy, radius, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.fillText(`${r} m`, ox + 3, oy - radius + 2);
    }
    // points: background 1 px first, then each class 2 px so objects stay on top
    if (!pointLayer || pointLayer.width !== W || pointLayer.height !== H) {
      pointLayer = document.createElement("canvas");
      pointLayer.width = W;
      pointLayer.height = H;
    }
    const image = new ImageData(W, H);
    const px = image.data;
    const count = points.length / 4;
    const scale = 1 / state.view.metresPerPixel;
    const cx = W / 2 + state.view.centreY * scale;
    const cy = H / 2 + state.view.centreX * scale;
    const counts = [0, 0, 0, 0];
    for (let pass = 0; pass < 2; pass++) {
      for (let i = 0; i < count; i++) {
        const label = points[4 * i + 3] | 0;
        if ((pass === 0) !== (label <= 0)) continue;
        if (pass === 0) counts[0]++;
        else if (label < counts.length) counts[label]++;
        const col = Math.floor(cx - points[4 * i + 1] * scale);
        const row = Math.floor(cy - points[4 * i] * scale);
        const colour = label > 0 ? CLASS_RGB[LABEL_NAMES[label]] || [255, 255, 255] : UNKNOWN_POINT;
        const size = label > 0 ? 2 : 1;
        for (let dr = 0; dr < size; dr++) {
          for (let dc = 0; dc < size; dc++) {
            const r = row + dr - (size >> 1);
            const c = col + dc - (size >> 1);
            if (r < 0 || r >= H || c < 0 || c >= W) continue;
            const k = 4 * (r * W + c);
            px[k] = colour[0];
            px[k + 1] = colour[1];
            px[k + 2] = colour[2];
            px[k + 3] = 255;
          }
        }
      }
    }
    pointLayer.getContext("2d").putImageData(image, 0, 0);
    ctx.drawImage(pointLayer, 0, 0);
    // the ego sensor
    ctx.fillStyle = "rgb(255, 255, 255)";
    ctx.beginPath();
    ctx.moveTo(ox, oy - 9);
    ctx.lineTo(ox - 5, oy + 5);
    ctx.lineTo(ox + 5, oy + 5);
    ctx.closePath();
    ctx.fill();
    // instance footprints with "#id class"
    const instances = header.instances || [];
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "top";
    for (const inst of instances) {
      const colour = classColour(inst.class_name);
      const [bx, by] = inst.box.center;
      const [length, width] = inst.box.size;
      const c = Math.cos(inst.box.yaw);
      const s = Math.sin(inst.box.yaw);
      const corners = [[length / 2, width / 2], [-length / 2, width / 2], [-length / 2, -width / 2], [length / 2, -width / 2]]
        .map(([u, v]) => toPixel(bx + u * c - v * s, by + u * s + v * c, canvas));
      ctx.strokeStyle = rgb(colour);
      ctx.lineWidth = 2;
      ctx.beginPath();
      corners.forEach(([u, v], k) => (k === 0 ? ctx.moveTo(u, v) : ctx.lineTo(u, v)));
      ctx.closePath();
      ctx.stroke();
      const text = `#${inst.id} ${inst.class_name}`;
      const left = Math.min(...corners.map((p) => p[0]));
      const top = Math.min(...corners.map((p) => p[1]));
      const tagW = ctx.measureText(text).width + 4;
      ctx.fillStyle = rgb(colour);
      ctx.fillRect(left, Math.max(0, top - 17), tagW, 15);
      ctx.fillStyle = "rgb(0, 0, 0)";
      ctx.fillText(text, left + 2, Math.max(0, top - 17) + 1);
    }
    state.drawnInstances = instances;
    const total = header.points.total;
    $("lidar-caption").textContent =
      `frame ${header.frame_id} · ${header.points.count} of ${total} points drawn · ${instances.length} instances · ` +
      LABEL_NAMES.slice(1).map((n, k) => `${n} ${counts[k + 1]}`).join(", ");
    $("instances").tBodies[0].innerHTML = instances.slice(0, 50).map((inst) =>
      `<tr><td>#${inst.id}</td><td><span class="swatch" style="background:${rgb(classColour(inst.class_name))}"></span>` +
      `${escapeHtml(inst.class_name)}</td><td class="num">${inst.num_points}</td>` +
      `<td>${fmt(inst.box.center[0], 1)}, ${fmt(inst.box.center[1], 1)}</td>` +
      `<td>${fmt(inst.box.size[0], 1)} × ${fmt(inst.box.size[1], 1)}</td></tr>`).join("");
    state.lidarFrameId = header.frame_id;
  }

  // --- latency -----------------------------------------------------------------------------------

  function updateLatency(header) {
    const timings = header.timings_ms || {};
    const total = timings.total;
    if (Number.isFinite(total)) {
      state.totals.push(total);
      if (state.totals.length > 30) state.totals.shift();
    }
    $("latency-total").textContent = Number.isFinite(total) ? `${total.toFixed(1)} ms` : "–";
    const mean = state.totals.reduce((a, b) => a + b, 0) / Math.max(1, state.totals.length);
    $("latency-mean").textContent = state.totals.length ? `${mean.toFixed(1)} ms` : "–";
    $("latency-frame").textContent = String(header.frame_id);
    $("latency-source").textContent = String(header.source);
    const names = STAGES.filter((s) => s in timings).concat(Object.keys(timings).filter((s) => !STAGES.includes(s)));
    const longest = Math.max(1e-9, ...names.map((s) => timings[s]));
    $("stages").tBodies[0].innerHTML = names.map((s) => {
      const width = Math.max(0.5, (100 * timings[s]) / longest).toFixed(1);
      return `<tr><td>${escapeHtml(s)}</td><td class="num">${fmt(timings[s], 1)}</td>` +
        `<td style="width:40%"><div class="bar" style="width:${width}%"></div></td></tr>`;
    }).join("");
    state.latencyFrameId = header.frame_id;
  }

  // --- controls ----------------------------------------------------------------------------------

  function setMinScore(value) {
    state.minScore = clamp(value, 0, 1, 0.4);
    $("min-score").value = String(state.minScore);
    $("min-score-value").textContent = state.minScore.toFixed(2);
    drawOverlay();
  }

  function zoom(factor, atCol, atRow) {
    const canvas = $("bev");
    const v = state.view;
    const col = atCol ?? canvas.width / 2;
    const row = atRow ?? canvas.height / 2;
    // keep the point under the cursor in place
    const y = v.centreY - (col - canvas.width / 2) * v.metresPerPixel;
    const x = v.centreX - (row - canvas.height / 2) * v.metresPerPixel;
    v.metresPerPixel = clamp(v.metresPerPixel * factor, 0.01, 2, DEFAULT_VIEW.metresPerPixel);
    v.centreY = y + (col - canvas.width / 2) * v.metresPerPixel;
    v.centreX = x + (row - canvas.height / 2) * v.metresPerPixel;
    drawLidar();
  }

  function canvasXY(canvas, event) {
    const rect = canvas.getBoundingClientRect();
    return [((event.clientX - rect.left) * canvas.width) / rect.width, ((event.clientY - rect.top) * canvas.height) / rect.height];
  }

  function setUpControls() {
    $("min-score").addEventListener("input", (e) => setMinScore(parseFloat(e.target.value)));
    $("zoom-in").addEventListener("click", () => zoom(1 / 1.25));
    $("zoom-out").addEventListener("click", () => zoom(1.25));
    $("zoom-reset").addEventListener("click", () => {
      state.view = Object.assign({}, DEFAULT_VIEW);
      drawLidar();
    });
    const bev = $("bev");
    bev.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [col, row] = canvasXY(bev, e);
      zoom(e.deltaY > 0 ? 1.15 : 1 / 1.15, col, row);
    }, { passive: false });
    let drag = null;
    bev.addEventListener("pointerdown", (e) => {
      drag = { xy: canvasXY(bev, e), centreX: state.view.centreX, centreY: state.view.centreY };
      bev.setPointerCapture(e.pointerId);
    });
    bev.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const [col, row] = canvasXY(bev, e);
      state.view.centreY = drag.centreY + (col - drag.xy[0]) * state.view.metresPerPixel;
      state.view.centreX = drag.centreX + (row - drag.xy[1]) * state.view.metresPerPixel;
      drawLidar();
    });
    const stop = () => { drag = null; };
    bev.addEventListener("pointerup", stop);
    bev.addEventListener("pointercancel", stop);
  }

  setUpControls();
  setMinScore(state.minScore);
  connect();
})();
