// The fleet page: plain JavaScript over the collector's JSON API, no build
// step. Data layer first (what is fetched, and which fields become which
// columns: add a field to a column list to show it), then rendering.
"use strict";

// ---- data layer ----------------------------------------------------------

const api = {
  agents: () => get("/api/v1/agents"),
  devices: () => get("/api/v1/devices"),
  health: () => get("/api/v1/health"),
  alerts: () => get("/api/v1/alerts?limit=200"),
  series: () => get("/api/v1/series"),
  query: (selector, fromAgo) =>
    get(`/api/v1/query?match=${encodeURIComponent(selector)}&from=-${fromAgo}`).then((rows) =>
      rows.map(numericSeries)),
};

// The query API writes ns times and values as strings (they do not fit
// JSON numbers: times above 2^53, NaN and infinities); the chart wants
// numbers. Older collectors wrote plain numbers: both read the same.
function value(x) {
  if (typeof x !== "string") return x;
  if (x === "+Inf") return Infinity;
  if (x === "-Inf") return -Infinity;
  return Number(x);
}
const WINDOW_FIELDS = ["start_ns", "len_ns", "sum", "min", "max", "first", "last", "p50", "p90", "p99"];
function numericSeries(s) {
  const readings = (s.readings || []).map(([t, v]) => [value(t), value(v)]);
  const windows = (s.windows || []).map((w) => {
    const out = { ...w };
    for (const f of WINDOW_FIELDS) if (w[f] !== undefined && w[f] !== null) out[f] = value(w[f]);
    return out;
  });
  return { ...s, readings, windows };
}

// The collector's HTTP API needs a token (http.auth = "tokens", the
// default): the page asks for one, keeps it in this browser's local storage
// and sends it as a bearer token.
const TOKEN_KEY = "ferry.token";

class AuthError extends Error {}

async function get(path) {
  const headers = { Accept: "application/json" };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(path, { headers });
  if (r.status === 401 || r.status === 403) {
    let why = `HTTP ${r.status}`;
    try { why = (await r.json()).error || why; } catch (_) { /* not JSON */ }
    throw new AuthError(why);
  }
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

// Health kinds that are not losses.
const NOT_DROPS = new Set(["received"]);

// Columns: [label, value(row, ctx) → text or Node, class]. A field the API
// does not send (yet) shows as "—".
const AGENT_COLUMNS = [
  ["agent", (a) => a.id, "id"],
  ["state", (a) => badge(a.state), "state"],
  ["last seen", (a) => ago(a.last_seen_ns), "last-seen"],
  ["remote", (a) => a.remote || na(), "remote"],
  ["readings", (a) => num(a.readings), "num readings"],
  ["backlog", (a) => field(a, "backlog_readings", num), "num backlog"],
  ["dropped", (a, c) => drops(c.agentDrops[a.id], a.dropped), "drops"],
  ["journal resets", (a) => field(a, "journal_resets", num), "num resets"],
  ["connections", (a) => num(a.connections), "num conns"],
];

const DEVICE_COLUMNS = [
  ["device", (d) => d.device, "device"],
  ["agent", (d) => d.agent, "agent"],
  ["last seen", (d) => ago(d.last_seen_ns), "last-seen"],
  ["firmware", (d) => field(d, "firmware", (v) => v), "firmware"],
  ["series", (d) => num(d.series.length), "num series-count"],
  ["dropped", (d) => drops(d.dropped), "drops"],
];

const ALERT_COLUMNS = [
  ["state", (e) => badge(e.state), "state"],
  ["rule", (e) => e.rule, "rule"],
  ["subject", (e) => e.subject, "subject"],
  ["value", (e) => fmt(e.value), "num value"],
  ["since", (e) => ago(e.since_ns || e.ts_ns), "since"],
];

// ---- state ---------------------------------------------------------------

const state = {
  selectedAgent: null,
  selectedSeries: null,
  range: "15m",
  seriesList: [],
};

// ---- formatting ----------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function na() { return el("span", { class: "na", title: "not reported by this collector" }, "—"); }
function field(row, name, f) { return row[name] === undefined || row[name] === null ? na() : f(row[name]); }
function num(n) { return Number(n).toLocaleString("en-US"); }
function fmt(v) {
  if (typeof v !== "number") return String(v);
  if (!isFinite(v)) return String(v);
  return Math.abs(v) >= 1000 ? v.toFixed(0) : Number(v.toPrecision(6)).toString();
}
function badge(s) { return el("span", { class: `badge state-${s}` }, s); }
function ago(ns) {
  ns = value(ns);
  if (!ns) return na();
  const s = Math.max(0, (Date.now() - ns / 1e6) / 1000);
  const text = s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
  return el("time", { dateTime: new Date(ns / 1e6).toISOString(), title: new Date(ns / 1e6).toLocaleString() }, text);
}
function drops(byReason, total) {
  const parts = Object.entries(byReason || {}).filter(([, n]) => n > 0);
  if (parts.length === 0) return total ? num(total) : "0";
  return parts.map(([r, n]) => `${r} ${num(n)}`).join(", ");
}

function table(columns, rows, ctx, opts = {}) {
  if (rows.length === 0) return el("p", { class: "empty" }, opts.empty || "none");
  const head = el("tr", {}, ...columns.map(([label]) => el("th", {}, label)));
  const body = rows.map((row) => {
    const tr = el("tr", opts.rowAttrs ? opts.rowAttrs(row) : {});
    for (const [label, value, cls] of columns) {
      tr.append(el("td", { class: cls || "", "data-label": label }, value(row, ctx)));
    }
    if (opts.onClick) {
      tr.classList.add("selectable");
      tr.addEventListener("click", () => opts.onClick(row));
    }
    return tr;
  });
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

// ---- rendering -----------------------------------------------------------

// The newest event per (rule, subject); firing ones are what is firing now.
function firingNow(events) {
  const last = new Map();
  for (const e of events) last.set(`${e.rule}\u0000${e.subject}`, e);
  return [...last.values()].filter((e) => e.state === "firing" || e.state === "offline");
}

function renderAll(d) {
  const agentDrops = {};
  for (const h of d.health) {
    if (NOT_DROPS.has(h.reason)) continue;
    const m = (agentDrops[h.agent] ||= {});
    m[h.reason] = (m[h.reason] || 0) + h.total;
  }
  const firing = firingNow(d.alerts);
  const connected = d.agents.filter((a) => a.state === "connected").length;
  document.getElementById("summary").textContent =
    `${d.agents.length} agents (${connected} connected) · ${d.devices.length} devices · ${firing.length} alerts firing`;

  document.getElementById("firing").replaceChildren(
    table(ALERT_COLUMNS, firing, {}, { empty: "nothing is firing", rowAttrs: (e) => ({ "data-alert": e.id }) }));
  document.getElementById("recent").replaceChildren(
    table(ALERT_COLUMNS, d.alerts.slice(-10).reverse(), {}, { empty: "no alert events yet" }));

  document.getElementById("agents").replaceChildren(table(AGENT_COLUMNS, d.agents, { agentDrops }, {
    empty: "no agents enrolled",
    rowAttrs: (a) => ({ "data-agent": a.id, class: a.id === state.selectedAgent ? "selected" : "" }),
    onClick: (a) => { state.selectedAgent = state.selectedAgent === a.id ? null : a.id; renderAll(d); },
  }));

  const devices = state.selectedAgent ? d.devices.filter((x) => x.agent === state.selectedAgent) : d.devices;
  document.getElementById("devices-of").textContent = state.selectedAgent ? `of ${state.selectedAgent}` : "";
  document.getElementById("devices").replaceChildren(table(DEVICE_COLUMNS, devices, {}, {
    empty: "no devices",
    rowAttrs: (x) => ({ "data-device": x.device, "data-agent": x.agent }),
    onClick: (x) => { selectSeries(x.series[0]); },
  }));

  renderSeriesSelect(d.series);
}

function renderSeriesSelect(series) {
  const names = series.map((s) => s.name).sort();
  const select = document.getElementById("series-select");
  if (names.join("\n") !== state.seriesList.join("\n")) {
    state.seriesList = names;
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  }
  if (!state.selectedSeries || !names.includes(state.selectedSeries)) {
    // Prefer a series with windows (a device's), else the first.
    state.selectedSeries = names.find((n) => n.includes("device=")) || names[0] || null;
  }
  if (state.selectedSeries) select.value = state.selectedSeries;
}

function selectSeries(name) {
  state.selectedSeries = name;
  document.getElementById("series-select").value = name;
  refreshChart();
}

async function refreshChart() {
  const box = document.getElementById("chart");
  if (!state.selectedSeries) {
    box.replaceChildren(el("p", { class: "empty" }, "no series yet"));
    return;
  }
  const result = await api.query(state.selectedSeries, state.range);
  const s = result.find((r) => r.series === state.selectedSeries) || result[0];
  box.replaceChildren(chart(s, state.selectedSeries));
}

// A time-series chart in SVG: raw readings as a line; windows as a min–max
// band, a p50–p99 band and a p50 line (or the mean when a window has no
// sketch).
function chart(s, name) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 900, H = 300, L = 56, R = 10, T = 10, B = 26;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("id", "chart-svg");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `chart of ${name}`);
  const readings = (s && s.readings) || [];
  const windows = (s && s.windows) || [];
  svg.dataset.series = name;
  svg.dataset.readings = readings.length;
  svg.dataset.windows = windows.length;
  const legend = document.getElementById("chart-legend");
  if (readings.length === 0 && windows.length === 0) {
    legend.replaceChildren(el("span", {}, "no data in this range"));
    return el("p", { class: "empty" }, `no data for ${name} in the last ${state.range}`);
  }
  const xs = [], ys = [];
  for (const [t, v] of readings) { xs.push(t); if (isFinite(v)) ys.push(v); }
  for (const w of windows) {
    xs.push(w.start_ns, w.start_ns + w.len_ns);
    for (const v of [w.min, w.max]) if (isFinite(v)) ys.push(v);
  }
  if (ys.length === 0) ys.push(0);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1e9;
  if (y1 === y0) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const X = (t) => L + ((t - x0) / (x1 - x0)) * (W - L - R);
  const Y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  const add = (tag, attrs) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    svg.append(e);
    return e;
  };
  // Axes and labels.
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#d6dae1" });
  for (const v of [y0 + pad, (y0 + y1) / 2, y1 - pad]) {
    add("line", { x1: L, y1: Y(v), x2: W - R, y2: Y(v), stroke: "#eef0f3" });
    add("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#667085" }).textContent = fmt(v);
  }
  const time = (t) => new Date(t / 1e6).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  add("text", { x: L, y: H - 8, "font-size": 11, fill: "#667085" }).textContent = time(x0);
  add("text", { x: W - R, y: H - 8, "text-anchor": "end", "font-size": 11, fill: "#667085" }).textContent = time(x1);
  const band = (lo, hi, fill, cls) => {
    if (windows.length === 0) return;
    const top = windows.map((w) => `${X(w.start_ns + w.len_ns / 2)},${Y(hi(w))}`);
    const bottom = windows.map((w) => `${X(w.start_ns + w.len_ns / 2)},${Y(lo(w))}`).reverse();
    add("polygon", { points: [...top, ...bottom].join(" "), fill, class: cls });
  };
  const hasSketch = windows.some((w) => w.p50 !== null && w.p50 !== undefined);
  band((w) => w.min, (w) => w.max, "rgba(36,87,197,0.15)", "band-minmax");
  if (hasSketch) band((w) => w.p50 ?? w.sum / w.count, (w) => w.p99 ?? w.max, "rgba(36,87,197,0.30)", "band-quantiles");
  if (windows.length > 0) {
    const mid = windows.map((w) => `${X(w.start_ns + w.len_ns / 2)},${Y(hasSketch && w.p50 != null ? w.p50 : w.sum / w.count)}`);
    add("polyline", { points: mid.join(" "), fill: "none", stroke: "#2457c5", "stroke-width": 2, class: "line-windows" });
  }
  if (readings.length > 0) {
    add("polyline", {
      points: readings.map(([t, v]) => `${X(t)},${Y(v)}`).join(" "),
      fill: "none", stroke: "#c2410c", "stroke-width": 1.5, class: "line-readings",
    });
  }
  // Legend with the newest values.
  const items = [];
  if (readings.length > 0) {
    const [t, v] = readings[readings.length - 1];
    items.push(el("span", { class: "legend-readings" }, el("span", { class: "swatch", style: "background:#c2410c" }),
      `readings: ${readings.length}, last ${fmt(v)}`));
    svg.dataset.lastReading = v;
    svg.dataset.lastReadingNs = t;
  }
  if (windows.length > 0) {
    const w = windows[windows.length - 1];
    items.push(el("span", { class: "legend-windows" }, el("span", { class: "swatch", style: "background:rgba(36,87,197,0.3)" }),
      `windows: ${windows.length}; last: count ${w.count}, min ${fmt(w.min)}, max ${fmt(w.max)}` +
      (w.p50 != null ? `, p50 ${fmt(w.p50)}, p99 ${fmt(w.p99)}` : `, mean ${fmt(w.sum / w.count)}`)));
    Object.assign(svg.dataset, { lastWindowStartNs: w.start_ns, lastWindowCount: w.count, lastWindowMin: w.min, lastWindowMax: w.max });
  }
  legend.replaceChildren(...items);
  return svg;
}

// ---- refresh loop --------------------------------------------------------

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [agents, devices, health, alerts, series] = await Promise.all([
      api.agents(), api.devices(), api.health(), api.alerts(), api.series(),
    ]);
    renderAll({ agents, devices, health, alerts, series });
    await refreshChart();
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "";
    document.body.dataset.loaded = "1";
    showLogin(false);
  } catch (e) {
    if (e instanceof AuthError) {
      status.textContent = "a token is needed";
      status.className = "error";
      showLogin(true, localStorage.getItem(TOKEN_KEY) ? e.message : "");
      return;
    }
    status.textContent = `cannot reach the collector: ${e.message}`;
    status.className = "error";
  }
}

function showLogin(show, why = "") {
  document.getElementById("login").hidden = !show;
  document.querySelector("main").hidden = show;
  document.getElementById("login-error").textContent = why;
  document.getElementById("sign-out").hidden = show || !localStorage.getItem(TOKEN_KEY);
  if (show) document.getElementById("token").focus();
}

function setup() {
  const ranges = document.getElementById("ranges");
  for (const r of ["5m", "15m", "1h", "6h", "24h"]) {
    const b = el("button", { type: "button", class: r === state.range ? "active" : "" }, r);
    b.addEventListener("click", () => {
      state.range = r;
      for (const x of ranges.children) x.classList.toggle("active", x === b);
      refreshChart();
    });
    ranges.append(b);
  }
  document.getElementById("series-select").addEventListener("change", (e) => selectSeries(e.target.value));
  document.getElementById("login").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("token");
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    refresh();
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    delete document.body.dataset.loaded;
    refresh();
  });
  refresh();
  setInterval(refresh, 5000);
}

setup();
