// The risk page: the worker's risk engine pushed over /events/risk (exposure, scenario heat maps,
// margin, signals in flight and fills, hedge rules with their state controls, signals and blocked
// hedges, alerts, positions).
"use strict";
const $ = id => document.getElementById(id);
const pending = {}; // rule id → state asked for and not read back yet

const fmt = (v, d) => v == null || v === "" ? "" :
  Number(v).toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
const time = ns => ns ? new Date(ns / 1e6).toISOString().slice(11, 23) : "";
const sig = v => v == null ? "" : Number(v).toPrecision(4);
const signed = (v, d) => v == null ? "" : (v > 0 ? "+" : "") + fmt(v, d);
function compact(v) {
  if (v == null) return "";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return v.toFixed(0);
}
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
}
function setCells(tr, values) { values.forEach((v, i) => { const td = tr.children[i]; const t = v ?? ""; if (td.textContent !== t) td.textContent = t; }); }

// Rows of `tbody` kept per key: existing rows are updated in place (buttons stay put), new ones made.
function keyed(tbody, items, keyOf, make, fill) {
  const old = new Map([...tbody.children].map(tr => [tr.dataset.key, tr]));
  const rows = items.map(it => {
    const k = keyOf(it);
    let tr = old.get(k);
    if (!tr) { tr = make(it); tr.dataset.key = k; }
    if (fill) fill(tr, it);
    return tr;
  });
  const same = rows.length === tbody.children.length && rows.every((r, i) => tbody.children[i] === r);
  if (!same) tbody.replaceChildren(...rows);
}

function flagText(e) {
  const parts = Object.entries(e.flags || {}).map(([k, f]) => `${k}: ${f.join(",")}`);
  for (const k of e.unknown || []) parts.push(`${k}: unknown instrument`);
  return parts.length ? parts.join("; ") : "ok";
}

function renderExposure(rows) {
  keyed($("exposure").tBodies[0], rows, e => `${e.portfolio}|${e.underlying}`,
    () => { const tr = document.createElement("tr"); for (let i = 0; i < 10; i++) tr.append(cell("", i < 2 || i === 8 ? "l" : "")); return tr; },
    (tr, e) => {
      tr.dataset.delta = e.delta;
      tr.className = e.ok ? "" : "stale";
      setCells(tr, [e.portfolio, e.underlying, fmt(e.delta, 4), fmt(e.delta_usd, 0), fmt(e.gamma_1pct, 4), fmt(e.vega, 2),
        fmt(e.theta, 2), fmt(e.notional_usd, 0), flagText(e), time(e.ts)]);
      const venue = e.venue || {};
      tr.children[2].title = venue.delta == null ? "" : `venue greeks: delta ${fmt(venue.delta, 4)}`;
    });
}

function marginFlags(m) {
  const parts = Object.entries(m.flags || {}).map(([k, f]) => `${k}: ${f.join(",")}`);
  for (const k of m.not_priced || []) parts.push(`${k}: not priced`);
  for (const k of m.no_avg_price || []) parts.push(`${k}: no avg_price`);
  if (m.collateral == null) parts.push("no collateral");
  return parts.length ? parts.join("; ") : "ok";
}

function renderMargin(rows) {
  keyed($("margin").tBodies[0], rows, m => `${m.portfolio}|${m.venue}|${m.currency}`,
    () => { const tr = document.createElement("tr"); for (let i = 0; i < 12; i++) tr.append(cell("", i < 4 || i > 8 && i < 11 ? "l" : "")); return tr; },
    (tr, m) => {
      tr.className = m.ok ? "" : "stale";
      const parts = Object.entries(m.components || {}).map(([k, v]) => `${k} ${fmt(v, 6)}`).join(" · ");
      setCells(tr, [m.portfolio, m.venue, m.currency, m.method, fmt(m.im, 6), fmt(m.mm, 6), fmt(m.equity, 6),
        sig(m.mm_ratio), sig(m.im_ratio), parts, marginFlags(m), time(m.ts)]);
    });
}

function renderFills(flying, fills) {
  const rows = [...flying.map(f => ({ ts: f.expires, signal: f.signal, state: "in flight", instrument: f.instrument,
    side: Number(f.size) > 0 ? "buy" : "sell", filled: `${f.filled} of ${String(f.size).replace("-", "")}`, price: null, by: f.rule })),
    ...[...fills].reverse()];
  keyed($("fills").tBodies[0], rows, f => `${f.signal}|${f.state}`,
    () => { const tr = document.createElement("tr"); for (let i = 0; i < 8; i++) tr.append(cell("", i > 0 && i !== 5 && i !== 6 ? "l" : "")); return tr; },
    (tr, f) => setCells(tr, [time(f.ts), f.signal, f.state, f.instrument, f.side, f.filled, f.price == null ? "" : fmt(f.price, 2), f.by]));
}

function heatTable(s) {
  const t = document.createElement("table");
  t.className = "heat";
  const cap = t.createCaption();
  cap.textContent = `${s.portfolio} · ${s.underlying} — worst ${fmt(s.worst_usd, 0)} USD` + (s.ok ? "" : " (flagged inputs)");
  const head = t.createTHead().insertRow();
  head.append(Object.assign(document.createElement("th"), { textContent: "move \\ vol" }));
  for (const v of s.vol_shifts) head.append(Object.assign(document.createElement("th"), { textContent: v === 0 ? "vol ±0" : `vol ${signed(v * 100, 0)} pts` }));
  const body = t.createTBody();
  const max = Math.max(1e-9, ...s.pnl_usd.flat().map(v => Math.abs(v ?? 0)));
  s.moves.forEach((m, i) => {
    const tr = body.insertRow();
    tr.append(Object.assign(document.createElement("th"), { textContent: m === 0 ? "±0%" : `${signed(m * 100, 0)}%` }));
    s.vol_shifts.forEach((_, j) => {
      const v = s.pnl_usd[i][j];
      const td = cell(compact(v));
      td.dataset.pnl = v;
      td.title = `${fmt(v, 2)} USD`;
      if (v) {
        const a = (0.12 + 0.78 * Math.abs(v) / max).toFixed(3);
        td.style.backgroundColor = v > 0 ? `rgba(63,185,80,${a})` : `rgba(248,81,73,${a})`;
      }
      tr.append(td);
    });
  });
  return t;
}

function renderScenarios(grids) {
  const box = $("scenarios");
  const old = new Map([...box.children].map(t => [t.dataset.key, t]));
  const tables = grids.map(s => {
    const k = `${s.portfolio}|${s.underlying}`;
    let t = old.get(k);
    if (!t || t.dataset.ts !== String(s.ts)) { t = heatTable(s); t.dataset.key = k; t.dataset.ts = s.ts; }
    return t;
  });
  if (!tables.length) { box.textContent = "no scenario computed yet (no positions)"; return; }
  if (tables.length !== box.children.length || tables.some((t, i) => box.children[i] !== t)) box.replaceChildren(...tables);
}

const TOKEN_KEY = "bookstream-control-token";  // WEB_CONTROL_TOKEN, asked once per tab when the worker needs it

function controlHeaders() {
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

async function setState(rule, state, asked = false) {
  const msg = $("rules-msg");
  msg.textContent = `${rule}: asking for ${state}…`;
  try {
    const resp = await fetch(`/api/risk/rules/${encodeURIComponent(rule)}/state`, {
      method: "POST", headers: controlHeaders(), body: JSON.stringify({ state }) });
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 401 && !asked) {
      const token = window.prompt("This worker's control token (WEB_CONTROL_TOKEN):");
      if (token) { sessionStorage.setItem(TOKEN_KEY, token.trim()); return setState(rule, state, true); }
    }
    if (resp.status === 202) { pending[rule] = state; msg.textContent = `${rule}: ${state} published, applies when read back`; }
    else msg.textContent = `${rule}: ${body.error || resp.status}`;
  } catch (err) {
    msg.textContent = `${rule}: ${err}`;
  }
}

function renderRules(rules) {
  keyed($("rules").tBodies[0], rules, r => r.id,
    r => {
      const tr = document.createElement("tr");
      for (let i = 0; i < 7; i++) tr.append(cell("", "l"));
      const st = document.createElement("span"); st.className = "state"; tr.children[5].append(st);
      const act = cell("", "l actions");
      for (const s of ["active", "reduce-only", "halted"]) {
        const b = document.createElement("button");
        b.textContent = s; b.dataset.state = s;
        b.addEventListener("click", () => setState(r.id, s));
        act.append(b);
      }
      tr.append(act);
      return tr;
    },
    (tr, r) => {
      if (pending[r.id] === r.state) delete pending[r.id];
      tr.dataset.state = r.state;
      tr.className = r.state === "active" ? "" : "rule-" + r.state;
      const cells = [r.id, `${r.portfolio} / ${r.underlying} / ${r.greek}`, `±${r.trigger} → ${r.target}`, r.hedge,
        `cooldown ${r.cooldown_s} s · ≤ ${r.max_per_minute}/min`];
      setCells(tr, cells);
      const st = tr.children[5].firstChild;
      const text = r.state + (r.state_by ? ` (${r.state_by})` : "") + (pending[r.id] ? ` → ${pending[r.id]}…` : "");
      if (st.textContent !== text) st.textContent = text;
      st.dataset.state = r.state;
      if (tr.children[6].textContent !== (r.blocked || "")) tr.children[6].textContent = r.blocked || "";
      for (const b of tr.children[7].children) { b.disabled = b.dataset.state === r.state; b.classList.toggle("on", b.disabled); }
    });
}

function renderSignals(hedge) {
  keyed($("signals").tBodies[0], hedge, h => h.id, h => {
    const tr = document.createElement("tr");
    tr.dataset.id = h.id;
    tr.dataset.type = h.type;
    tr.className = h.type;
    const sig = h.type === "signal";
    const move = sig ? `${fmt(h.exposure_before, 4)} → ${fmt(h.exposure_after, 4)}` : fmt(h.exposure, 4);
    tr.append(cell(time(h.ts), "l"), cell(h.type, "l"), cell(h.rule, "l"), cell(h.side, "l " + (h.side === "buy" ? "bid" : "ask")),
      cell(h.size), cell(h.instrument, "l"), cell(move), cell(fmt(h.expected_price, 2)), cell(fmt(h.slippage_bps, 2)),
      cell(h.reason, "l"));
    return tr;
  });
}

function renderAlerts(alerts) {
  const ul = $("alerts");
  if (!alerts.length) {
    const li = document.createElement("li"); li.className = "none"; li.textContent = "no alert raised";
    ul.replaceChildren(li);
    return;
  }
  ul.replaceChildren(...alerts.map(a => {
    const li = document.createElement("li");
    li.dataset.key = `${a.kind}|${a.key}`;
    li.className = "alert";
    li.textContent = `${a.kind} · ${a.key}: ${a.detail} (since ${time(a.ts)})`;
    return li;
  }));
}

function renderPositions(rows, held, bad) {
  const engine = new Map(held.map(p => [`${p.portfolio}|${p.instrument}`, p.quantity]));
  const keys = new Set(rows.map(p => `${p.portfolio}|${p.instrument}`));
  const all = [...rows, ...held.filter(p => !keys.has(`${p.portfolio}|${p.instrument}`))
    .map(p => ({ portfolio: p.portfolio, instrument: p.instrument, quantity: "", avg_price: null }))];
  $("positions").tBodies[0].replaceChildren(...all.map(p => {
    const tr = document.createElement("tr");
    tr.dataset.key = `${p.portfolio}|${p.instrument}`;
    tr.append(cell(p.portfolio, "l"), cell(p.instrument, "l"), cell(p.quantity), cell(p.avg_price),
      cell(engine.get(tr.dataset.key) ?? ""));
    return tr;
  }));
  $("bad-positions").replaceChildren(...Object.entries(bad || {}).map(([k, why]) => {
    const li = document.createElement("li"); li.className = "alert"; li.textContent = `not applied: ${k}: ${why}`; return li;
  }));
}

const es = new EventSource("/events/risk");
es.onopen = () => { $("status").textContent = "live"; };
es.onerror = () => { $("status").textContent = "reconnecting…"; };
es.addEventListener("risk", ev => {
  const msg = JSON.parse(ev.data);
  const off = $("disabled");
  if (msg.error) {
    off.hidden = false; off.textContent = msg.error; $("status").textContent = "no risk engine";
    return;
  }
  off.hidden = true;
  $("status").textContent = `live · ${msg.pending_inputs} inputs waiting`;
  $("clock").textContent = msg.event_time ? `event time ${time(msg.event_time)} UTC` : "no market input yet";
  renderExposure(msg.exposure || []);
  renderMargin(msg.margin || []);
  renderFills(msg.in_flight || [], msg.fills || []);
  renderScenarios(msg.scenarios || []);
  renderRules(msg.rules || []);
  renderSignals(msg.hedge || []);
  renderAlerts(msg.alerts || []);
  renderPositions(msg.positions || [], msg.held || [], msg.bad_positions);
});
