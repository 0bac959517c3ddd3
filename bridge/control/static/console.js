// a2e-bridge live console: state over a WebSocket (~20 Hz), commands back over it.
// No build step, no libraries: plain DOM and canvas.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" +
  (token ? "?token=" + encodeURIComponent(token) : "");
let ws = null;
let names = [];
let index = {};
let nextId = 1;
const cards = [];
const latHistory = [];  // [p50, p95] per state, last 60 s at 20 Hz
const peakHold = [];    // per performer: [dBFS, until ms]
let presetsShown = "";

function $(sel, root) { return (root || document).querySelector(sel); }
function v(values, name) { const i = index[name]; return i === undefined ? 0 : values[i]; }
function fmt(x, digits) { return x === null || x === undefined ? "-" : Number(x).toFixed(digits); }

function toast(text) {
  const t = $("#toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

function send(command, value, performer) {
  if (!ws || ws.readyState !== WebSocket.OPEN) { toast("not connected"); return; }
  const msg = { type: "command", id: nextId++, command: command, value: value };
  if (performer !== undefined && performer !== null) msg.performer = performer;
  ws.send(JSON.stringify(msg));
}

function connect() {
  ws = new WebSocket(wsUrl);
  ws.onmessage = (ev) => {
    const doc = JSON.parse(ev.data);
    if (doc.type === "state") render(doc);
    else if (doc.type === "result" && !doc.ok) toast(doc.error);
  };
  ws.onclose = () => {
    const h = $("#health");
    h.textContent = "disconnected";
    h.className = "badge down";
    setTimeout(connect, 1000);
  };
}

// ---- the face: a 2D drawing of the blendshapes ----------------------------------------
function drawFace(canvas, values) {
  const c = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, cx = w / 2;
  c.clearRect(0, 0, w, h);
  c.fillStyle = "#d9b99b";
  c.beginPath(); c.ellipse(cx, h * 0.5, w * 0.42, h * 0.46, 0, 0, 2 * Math.PI); c.fill();
  // eyes (blink closes them, wide opens them)
  const eyeY = h * 0.4;
  for (const side of ["Left", "Right"]) {
    const x = cx + (side === "Left" ? -1 : 1) * w * 0.17;
    const open = Math.max(0.05, 1 - v(values, "eyeBlink" + side) - 0.5 * v(values, "eyeSquint" + side) +
      0.4 * v(values, "eyeWide" + side));
    c.fillStyle = "#fff";
    c.beginPath(); c.ellipse(x, eyeY, w * 0.08, h * 0.04 * open, 0, 0, 2 * Math.PI); c.fill();
    c.fillStyle = "#333";
    c.beginPath(); c.ellipse(x, eyeY, w * 0.03, Math.min(w * 0.03, h * 0.04 * open), 0, 0, 2 * Math.PI); c.fill();
    // brows
    const up = v(values, "browInnerUp") * 0.6 + v(values, "browOuter" + "Up" + side) * 0.4 -
      v(values, "browDown" + side) * 0.5;
    c.strokeStyle = "#5a4030"; c.lineWidth = 4;
    c.beginPath();
    c.moveTo(x - w * 0.09, eyeY - h * 0.07 - up * h * 0.05);
    c.lineTo(x + w * 0.09, eyeY - h * 0.07 - up * h * 0.05 * (side === "Left" ? 0.7 : 1.3));
    c.stroke();
  }
  // mouth: jaw and lower lip open it; smile/stretch widen it; funnel/pucker narrow and round it
  const jaw = v(values, "jawOpen");
  const smile = (v(values, "mouthSmileLeft") + v(values, "mouthSmileRight")) / 2;
  const stretch = (v(values, "mouthStretchLeft") + v(values, "mouthStretchRight")) / 2;
  const round = Math.max(v(values, "mouthFunnel"), v(values, "mouthPucker"));
  const lower = (v(values, "mouthLowerDownLeft") + v(values, "mouthLowerDownRight")) / 2;
  const close = v(values, "mouthClose");
  const mouthY = h * 0.7;
  const half = w * (0.16 + 0.06 * smile + 0.05 * stretch - 0.08 * round);
  const open = Math.max(0, h * (0.16 * jaw + 0.05 * lower - 0.05 * close));
  const corner = -h * 0.03 * smile;
  c.fillStyle = "#7a2630";
  c.strokeStyle = "#a8505a"; c.lineWidth = 3;
  c.beginPath();
  c.moveTo(cx - half, mouthY + corner);
  c.quadraticCurveTo(cx, mouthY - h * 0.02 - open * 0.15, cx + half, mouthY + corner);
  c.quadraticCurveTo(cx, mouthY + open * 1.6 + h * 0.01, cx - half, mouthY + corner);
  c.closePath(); c.fill(); c.stroke();
  canvas.dataset.jaw = jaw.toFixed(4);
  canvas.dataset.mouthOpen = open.toFixed(2);
}

// ---- one performer's card --------------------------------------------------------------
function makeCard(p) {
  const node = $("#performer-template").content.firstElementChild.cloneNode(true);
  node.id = "perf-" + p.index;
  $(".face", node).id = "face-" + p.index;
  $(".meter", node).id = "level-" + p.index;
  const mute = $(".mute", node);
  mute.id = "mute-" + p.index;
  mute.addEventListener("click", () => send("mute", mute.classList.contains("on") ? 0 : 1, p.name));
  for (const key of ["gain", "gate", "smoothing"]) {
    const input = $("." + key, node);
    input.addEventListener("change", () => send(key, Number(input.value), p.name));
    input.addEventListener("input", () => { input.nextElementSibling.textContent = input.value; });
  }
  for (const key of ["lookahead", "identity"]) {
    const input = $("." + key, node);
    input.addEventListener("change", () => send(key, Number(input.value), p.name));
  }
  for (const key of ["blink", "head"]) {
    const input = $("." + key, node);
    input.addEventListener("change", () => send(key, input.checked ? 1 : 0, p.name));
  }
  $(".calibrate", node).addEventListener("click", () => send("calibrate", 3, p.name));
  const bars = $(".bars", node);
  for (const n of names) {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = "<span></span><div></div>";
    row.firstChild.textContent = n;
    bars.appendChild(row);
  }
  $("#performers").appendChild(node);
  return node;
}

function setControl(node, key, value) {
  const input = $("." + key, node);
  if (!input) return;
  const label = input.closest("label");
  if (value === undefined || value === null) { if (label) label.hidden = true; return; }
  if (label) label.hidden = false;
  if (document.activeElement === input) return;  // the user is moving it
  if (input.type === "checkbox") input.checked = !!value;
  else input.value = value;
  if (input.nextElementSibling && input.nextElementSibling.tagName === "OUTPUT") {
    input.nextElementSibling.textContent = value;
  }
}

function renderPerformer(p) {
  let node = cards[p.index];
  if (!node) node = cards[p.index] = makeCard(p);
  $(".name", node).textContent = p.name;
  $(".subject", node).textContent = p.subject;
  $(".frame", node).textContent = "frame " + p.frame + (p.input === "lost" ? " (input lost)" : "");
  const now = Date.now();
  const hold = peakHold[p.index] || [-120, 0];
  if (p.peak_dbfs >= hold[0] || now > hold[1]) peakHold[p.index] = [p.peak_dbfs, now + 1500];
  const pct = (db) => Math.max(0, Math.min(100, (db + 60) / 60 * 100));
  const meter = $(".meter", node);
  $(".level", meter).style.width = pct(p.level_dbfs) + "%";
  $(".peak", meter).style.left = pct(peakHold[p.index][0]) + "%";
  meter.dataset.db = p.level_dbfs;
  $(".db", node).textContent = fmt(p.level_dbfs, 1) + " dBFS";
  $(".clip", node).classList.toggle("on", p.clip);
  const lat = p.latency_ms || {};
  $(".latency", node).textContent = "latency p50 " + fmt(lat.p50, 1) + " / p95 " + fmt(lat.p95, 1) + " ms";
  const speaking = p.gate_open === true || (p.speech !== null && p.speech >= 0.5);
  $(".speech", node).classList.toggle("on", speaking);
  const s = p.settings;
  const mute = $(".mute", node);
  mute.classList.toggle("on", s.mute);
  mute.textContent = s.mute ? "Muted (click to unmute)" : "Mute";
  for (const key of ["gain", "gate", "smoothing", "lookahead", "identity", "blink", "head"]) {
    setControl(node, key, s[key]);
  }
  const cal = p.calibration;
  $(".calibration", node).textContent = cal ? "calibration: " + cal.state + (cal.reason ? " - " + cal.reason : "") : "";
  drawFace($(".face", node), p.values);
  const rows = Object.keys(p.raw).map((n) =>
    "<tr><td>" + n + "</td><td>" + fmt(p.raw[n], 3) + "</td><td>" + fmt(v(p.values, n), 3) + "</td></tr>");
  $(".raw tbody", node).innerHTML = rows.join("");
  const bars = $(".bars", node).children;
  for (let i = 0; i < bars.length; i++) {
    bars[i].lastChild.style.width = Math.round(Math.max(0, Math.min(1, p.values[i])) * 60) + "px";
  }
}

function drawLatency() {
  const canvas = $("#latency-graph");
  const c = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  c.clearRect(0, 0, w, h);
  const top = Math.max(50, ...latHistory.map((x) => x[1] || 0)) * 1.1;
  c.fillStyle = "#8b93a1"; c.font = "10px sans-serif"; c.fillText(Math.round(top) + " ms", 2, 10);
  [[0, "#58a6ff"], [1, "#d29922"]].forEach(([k, color]) => {
    c.strokeStyle = color; c.lineWidth = 1.5; c.beginPath();
    latHistory.forEach((x, i) => {
      const px = w - (latHistory.length - 1 - i) * (w / 1200);
      const py = h - (x[k] || 0) / top * h;
      if (i === 0) c.moveTo(px, py); else c.lineTo(px, py);
    });
    c.stroke();
  });
}

function render(doc) {
  if (names.length === 0) {
    names = doc.names;
    names.forEach((n, i) => { index[n] = i; });
  }
  const h = $("#health");
  h.textContent = doc.health.status + (doc.health.reasons && doc.health.reasons.length ? " (" + doc.health.reasons.join("; ") + ")" : "");
  h.className = "badge " + doc.health.status;
  const m = doc.model;
  $("#model").textContent = m.preset + " on " + m.provider + (m.fallback ? " (switched from " + m.fallback.from + ")" : "");
  const presets = doc.presets.join(",");
  const sel = $("#model-select");
  if (presets !== presetsShown) {
    presetsShown = presets;
    sel.innerHTML = "";
    for (const name of doc.presets) {
      const o = document.createElement("option");
      o.value = o.textContent = name;
      sel.appendChild(o);
    }
    sel.onchange = () => send("model", sel.value);
  }
  if (document.activeElement !== sel) sel.value = m.preset;
  $("#fps").textContent = fmt(doc.frames.fps, 1);
  $("#lat-p50").textContent = fmt(doc.latency_ms.p50, 1);
  $("#lat-p95").textContent = fmt(doc.latency_ms.p95, 1);
  $("#inf-p50").textContent = fmt(doc.inference_ms.p50, 1);
  $("#stride").textContent = fmt(doc.stride, 2);
  $("#dropped").textContent = doc.frames.dropped;
  $("#published").textContent = doc.frames.published;
  const pt = doc.passthrough;
  const ptNode = $("#passthrough");
  ptNode.hidden = !pt;
  if (pt) {
    ptNode.textContent = "voice passthrough " + pt.device + (pt.lost ? " LOST" : "") + ": delay " +
      fmt(pt.delay_ms, 1) + " ms (" + pt.mode + (pt.target_ms !== null ? ", target " + fmt(pt.target_ms, 1) : "") +
      "), drift " + fmt(pt.drift_ppm, 0) + " ppm, underruns " + pt.underruns;
  }
  latHistory.push([doc.latency_ms.p50, doc.latency_ms.p95]);
  if (latHistory.length > 1200) latHistory.shift();
  drawLatency();
  $("#warnings").innerHTML = "";
  for (const w of doc.warnings) {
    const li = document.createElement("li");
    li.textContent = w;
    $("#warnings").appendChild(li);
  }
  doc.performers.forEach(renderPerformer);
  const body = $("#outputs tbody");
  while (body.children.length < doc.outputs.length) {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td><input type=checkbox></td><td></td><td></td><td></td><td></td><td></td><td></td>";
    const box = tr.firstChild.firstChild;
    const i = body.children.length;
    box.id = "output-" + i;
    box.addEventListener("change", () => send("output/" + tr.dataset.id + "/enabled", box.checked ? 1 : 0));
    body.appendChild(tr);
  }
  doc.outputs.forEach((o, i) => {
    const tr = body.children[i];
    tr.dataset.id = o.id;
    const cells = tr.children;
    if (document.activeElement !== cells[0].firstChild) cells[0].firstChild.checked = o.enabled;
    cells[1].textContent = o.id;
    cells[2].textContent = o.name;
    cells[3].textContent = o.state;
    cells[3].className = "state-" + o.state;
    cells[4].textContent = o.sent;
    cells[5].textContent = o.errors;
    cells[6].textContent = o.error || "";
  });
  const events = $("#events");
  events.innerHTML = "";
  for (const e of doc.events.slice().reverse()) {
    const li = document.createElement("li");
    li.textContent = new Date(e.time * 1000).toLocaleTimeString() + "  " + e.warning;
    events.appendChild(li);
  }
}

connect();
