// The tokengate dashboard: one WebSocket back to the page's own port (the session
// cookie authenticates it), stats events 4 times a second, commands as the `ctl` CLI
// sends them. No inline code: the page's Content-Security-Policy forbids it.
"use strict";

const INTERVAL_MS = 250;
const HISTORY = 5 * 60 * 1000 / INTERVAL_MS; // five minutes of points
const FIELDS = ["weight", "submitted", "waiting", "held", "running", "completed", "failed", "cancelled",
  "timed_out", "rejected", "throughput", "p50_ms", "p99_ms", "overrides"];

const $ = (id) => document.getElementById(id);
let socket = null;
let nextId = 1;
let updates = 0;
const history = { t: [], throughput: [], light: [], heavy: [], remote: [] };
let charts = null;

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  return value.toLocaleString("en-US", { maximumFractionDigits: digits ?? 0 });
}

function describeOverrides(o, unmet) {
  const parts = [];
  if (o.paused) parts.push("paused");
  if (o.pin) parts.push("pin " + o.pin + (unmet ? ` (not honoured: ${fmt(unmet)} ran here)` : ""));
  if (o.batch) parts.push("batch " + o.batch);
  if (o.throttle) parts.push("throttle " + o.throttle);
  return parts.join(", ");
}

function renderOps(ops) {
  const body = $("ops").tBodies[0];
  for (const op of ops) {
    let row = body.querySelector(`tr[data-op="${CSS.escape(op.op)}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.op = op.op;
      cell(row, op.op);
      for (const field of FIELDS) cell(row, "").dataset.field = field;
      body.appendChild(row);
    }
    for (const field of FIELDS) {
      const td = row.querySelector(`td[data-field="${field}"]`);
      const value = op[field];
      td.textContent = field === "overrides" ? describeOverrides(value, op.pin_unmet)
        : field.endsWith("_ms") ? fmt(value, 3)
        : value === undefined || value === null ? "" : fmt(value);
    }
  }
  const select = $("op");
  const names = ops.map((o) => o.op);
  const have = Array.from(select.options).map((o) => o.value);
  if (names.join("\n") !== have.join("\n")) {
    const chosen = select.value;
    select.replaceChildren(...names.map((name) => new Option(name, name)));
    if (names.includes(chosen)) select.value = chosen;
  }
  const active = ops.filter((o) => describeOverrides(o.overrides, o.pin_unmet));
  $("overrides").replaceChildren(...(active.length ? active : [null]).map((o) => {
    const li = document.createElement("li");
    li.textContent = o ? `${o.op}: ${describeOverrides(o.overrides, o.pin_unmet)}` : "none";
    return li;
  }));
}

function renderLanes(lanes) {
  const rows = lanes.map((lane) => {
    const row = document.createElement("tr");
    cell(row, lane.lane);
    cell(row, lane.set);
    cell(row, lane.core ?? (lane.priority === "idle" ? "any (idle priority)" : "any"));
    cell(row, (lane.busy_share * 100).toFixed(0) + " %");
    cell(row, fmt(lane.tokens));
    return row;
  });
  $("lanes").tBodies[0].replaceChildren(...rows);
}

function runtime(ns) {
  if (ns === null || ns === undefined) return "∞";
  if (ns >= 1e6) return fmt(ns / 1e6, 2) + " ms";
  if (ns >= 1e3) return fmt(ns / 1e3, 1) + " µs";
  return ns + " ns";
}

function renderModel(model) {
  $("model").textContent = model.version === 0 ? "no model: routing by tags or running average"
    : `version ${model.version.toString(16)}, ${model.classes.length} classes, ` +
      `${model.swaps} swaps, adaptation ${model.adapting ? "on" : "off"}`;
  $("classes").tBodies[0].replaceChildren(...model.classes.map((c, i) => {
    const row = document.createElement("tr");
    cell(row, i);
    cell(row, `${runtime(c.min_ns)} – ${runtime(c.max_ns)}`);
    cell(row, c.lanes);
    cell(row, c.batch);
    return row;
  }));
  const judged = model.recent.filter((t) => t.predicted !== null && t.actual !== null);
  const hits = judged.filter((t) => t.predicted === t.actual).length;
  $("agreement").textContent = model.recent.length === 0
    ? "no recent tokens (the engine logs no telemetry)"
    : judged.length ? `${hits} of ${judged.length} predicted right` : "no model-routed tokens";
  $("recent").tBodies[0].replaceChildren(...model.recent.slice(0, 16).map((t) => {
    const row = document.createElement("tr");
    cell(row, t.token);
    cell(row, t.op);
    cell(row, t.predicted ?? "–");
    const right = t.predicted !== null && t.actual !== null ? (t.predicted === t.actual ? "hit" : "miss") : "";
    cell(row, t.actual ?? "–", right);
    cell(row, fmt(t.run_ns / 1e3, 1));
    cell(row, t.lane);
    return row;
  }));
}

function compact(value) {
  if (value === null || value === undefined) return "";
  const abs = Math.abs(value);
  for (const [scale, suffix] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (abs >= scale) return (value / scale).toLocaleString("en-US", { maximumFractionDigits: 1 }) + suffix;
  }
  return value.toLocaleString("en-US", { maximumFractionDigits: 3 });
}

function makeCharts() {
  if (typeof uPlot === "undefined") return null;
  const width = Math.min(560, Math.max(320, (window.innerWidth - 120) / 2));
  const opts = (series) => ({
    width, height: 200,
    scales: { x: { time: true } },
    series: [{}, ...series],
    // Compact values (19.1M, not 19,100,000) so the axis labels fit their gutter.
    axes: [{}, { size: 60, values: (u, splits) => splits.map(compact) }],
  });
  return {
    throughput: new uPlot(opts([{ label: "tokens/s", stroke: "#1f77b4", width: 1.5 }]),
      [history.t, history.throughput], $("chart-throughput")),
    p99: new uPlot(opts([{ label: "light lanes", stroke: "#2ca02c", width: 1.5 },
      { label: "heavy lanes", stroke: "#d62728", width: 1.5 },
      { label: "remote", stroke: "#9467bd", width: 1.5 }]),
      [history.t, history.light, history.heavy, history.remote], $("chart-p99")),
  };
}

// p99 of the tokens each lane set resolved since the previous update (the engine's
// per-set histograms); a set that resolved nothing leaves a gap.
function record(ops, sets) {
  const p99Of = (name) => {
    const set = (sets || []).find((s) => s.set === name);
    return set && set.tokens > 0 ? set.p99_ms : null;
  };
  history.t.push(Date.now() / 1000);
  // The first update of a connection has no window, so no rate: a gap, not a false 0.
  const rates = ops.map((o) => o.throughput).filter((t) => typeof t === "number");
  history.throughput.push(rates.length ? rates.reduce((sum, t) => sum + t, 0) : null);
  history.light.push(p99Of("light"));
  history.heavy.push(p99Of("heavy"));
  history.remote.push(p99Of("remote"));
  if (history.t.length > HISTORY) for (const key in history) history[key].shift();
  charts = charts || makeCharts();
  if (charts) {
    charts.throughput.setData([history.t, history.throughput]);
    charts.p99.setData([history.t, history.light, history.heavy, history.remote]);
  }
}

function onStats(event) {
  updates += 1;
  $("updates").textContent = `${updates} updates` +
    (event.dropped_events ? `, ${event.dropped_events} dropped` : "");
  renderOps(event.ops);
  record(event.ops, event.engine && event.engine.sets);
  if (event.engine) {
    renderLanes(event.engine.lanes);
    renderModel(event.engine.model);
  }
}

function onOverride(event) {
  const li = document.createElement("li");
  const change = typeof event.change === "string" ? event.change : JSON.stringify(event.change);
  li.textContent = `${new Date().toLocaleTimeString()} connection ${event.by}: ` +
    `${event.cmd} ${event.op ?? "all"} ${change}`;
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 20) list.lastChild.remove();
}

function send(command) {
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    $("reply").textContent = "not connected";
    return;
  }
  socket.send(JSON.stringify({ id: nextId++, ...command }));
}

function connect() {
  socket = new WebSocket(`ws://${location.host}/`);
  socket.onopen = () => {
    $("status").textContent = "live";
    $("status").className = "status ok";
    send({ cmd: "subscribe", interval_ms: INTERVAL_MS, engine: true });
  };
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.event === "stats") onStats(data);
    else if (data.event === "override") onOverride(data);
    else if (data.event === "model_swapped") onOverride({ by: "-", cmd: "model", op: "swapped", change: data.version });
    else if (data.ok === false) $("reply").textContent = `#${data.id}: ${data.error.code}: ${data.error.message}`;
    else if (data.ok) $("reply").textContent = `#${data.id}: ok` +
      (data.cancelled_now !== undefined ? `, ${data.cancelled_now} cancelled at once` : "");
  };
  socket.onclose = () => {
    $("status").textContent = "disconnected: reload the page (or open it again with ?token=…)";
    $("status").className = "status bad";
  };
}

function numberOrNull(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

function wire() {
  const op = () => $("op").value;
  $("pause").onclick = () => send({ cmd: "pause", op: op() });
  $("resume").onclick = () => send({ cmd: "resume", op: op() });
  $("clear").onclick = () => send({ cmd: "clear", op: op() });
  $("cancel").onclick = () => {
    if (confirm(`Cancel every waiting token of ${op()}?`)) send({ cmd: "cancel", op: op() });
  };
  $("throttle").onclick = () => send({ cmd: "throttle", op: op(), max: numberOrNull("throttle-max") });
  $("pin").onclick = () => send({ cmd: "pin", op: op(), lanes: $("pin-lanes").value || null });
  $("batch").onclick = () => send({ cmd: "batch", op: op(), size: numberOrNull("batch-size") });
  $("pause-all").onclick = () => send({ cmd: "pause" });
  $("resume-all").onclick = () => send({ cmd: "resume" });
  $("clear-all").onclick = () => send({ cmd: "clear" });
  $("cancel-token").onclick = () => {
    const token = numberOrNull("token-id");
    if (token !== null && confirm(`Cancel token ${token}?`)) send({ cmd: "cancel", token });
  };
  $("shutdown").onclick = () => {
    const mode = $("shutdown-mode").value;
    if (confirm(`Shut the engine down (${mode})?`)) send({ cmd: "shutdown", mode });
  };
}

wire();
connect();
