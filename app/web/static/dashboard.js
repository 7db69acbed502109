// Live dashboard: books pushed by the worker over Server-Sent Events (/events), no polling.
"use strict";
const tbody = document.querySelector("#books tbody");
const venueSel = document.getElementById("venue");
const filterIn = document.getElementById("filter");
let books = [], sortKey = "instrument", asc = true, knownVenues = new Set();

function num(v) { const n = parseFloat(v); return isNaN(n) ? -Infinity : n; }
function cell(text, cls) { const td = document.createElement("td"); td.textContent = text ?? ""; if (cls) td.className = cls; return td; }

function render() {
  const v = venueSel.value, f = filterIn.value.trim().toUpperCase();
  const now = Date.now() / 1000;
  let rows = books.filter(b => (!v || b.venue === v) && (!f || b.key.toUpperCase().includes(f)));
  rows.forEach(b => { b.age = b.ts_recv ? now - b.ts_recv / 1e9 : null; });
  rows.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    const c = (typeof x === "string" && isNaN(parseFloat(x))) ? String(x).localeCompare(String(y)) : num(x) - num(y);
    return asc ? c : -c;
  });
  tbody.replaceChildren(...rows.map(b => {
    const tr = document.createElement("tr");
    tr.className = b.state; tr.dataset.key = b.key;
    const a = document.createElement("a");
    a.href = `/book/${encodeURIComponent(b.venue)}/${encodeURIComponent(b.instrument)}`; a.textContent = b.instrument;
    const first = cell(""); first.className = "l"; first.appendChild(a);
    const st = cell(""); st.className = "l"; const s = document.createElement("span");
    s.className = "state"; s.textContent = b.state + (b.state === "stale" ? `: ${b.reason}` : ""); st.appendChild(s);
    tr.append(first, cell(b.venue, "l"), st, cell(b.bid_sz, "bid"), cell(b.bid_px, "bid bidpx"), cell(b.ask_px, "ask askpx"),
      cell(b.ask_sz, "ask"), cell(b.spread_bps), cell(b.mid), cell(b.age == null ? "" : b.age.toFixed(1)));
    return tr;
  }));
  document.getElementById("count").textContent = `${rows.length} of ${books.length} books`;
}

function renderVenues(venues) {
  const box = document.getElementById("venues");
  box.replaceChildren(...Object.entries(venues || {}).map(([name, s]) => {
    const d = document.createElement("span");
    d.className = "venue" + (s.connected < s.connections ? " down" : "");
    const age = s.last_frame_age_s == null ? "–" : s.last_frame_age_s.toFixed(1) + "s";
    d.textContent = `${name} ${s.connected}/${s.connections} up · ${Math.round(s.frames_per_s)}/s · last ${age} · ${s.reconnects} reconnects`;
    return d;
  }));
}

document.querySelectorAll("#books th").forEach(th => th.addEventListener("click", () => {
  const k = th.dataset.k; asc = sortKey === k ? !asc : true; sortKey = k;
  document.querySelectorAll("#books th").forEach(x => x.classList.remove("sorted", "asc"));
  th.classList.add("sorted"); if (asc) th.classList.add("asc"); render();
}));
venueSel.addEventListener("change", render);
filterIn.addEventListener("input", render);

const es = new EventSource("/events");
es.onopen = () => { document.getElementById("conn").textContent = "live"; };
es.onerror = () => { document.getElementById("conn").textContent = "reconnecting…"; };
es.addEventListener("books", ev => {
  const msg = JSON.parse(ev.data);
  books = msg.books;
  for (const b of books) if (!knownVenues.has(b.venue)) {
    knownVenues.add(b.venue); const o = document.createElement("option"); o.value = o.textContent = b.venue; venueSel.append(o);
  }
  renderVenues(msg.venues);
  renderChains(msg.chains || []);
  render();
});

// Links to the options page of every underlying with a chain on this worker.
function renderChains(chains) {
  const box = document.getElementById("chains"), text = chains.map(c => `${c.venue}/${c.underlying}`).join();
  if (box.dataset.text === text) return;
  box.dataset.text = text;
  box.replaceChildren(...chains.map(c => {
    const a = document.createElement("a");
    a.href = `/options/${encodeURIComponent(c.venue)}/${encodeURIComponent(c.underlying)}`;
    a.textContent = `${c.venue} ${c.underlying} options`;
    return a;
  }));
}

// The cross-venue best bid/offer of the risk engine (/events/risk?only=nbbo); "risk disabled" without one.
function renderNbbo(msg) {
  const table = document.getElementById("nbbo"), status = document.getElementById("nbbo-status");
  if (msg.error) {
    table.hidden = true;
    status.textContent = msg.error.startsWith("risk engine disabled") ? "risk disabled" : msg.error;
    return;
  }
  const rows = msg.nbbo || [];
  table.hidden = rows.length === 0;
  status.textContent = rows.length ? "" : "no spot or perpetual book quoted yet";
  table.tBodies[0].replaceChildren(...rows.map(n => {
    const tr = document.createElement("tr");
    tr.dataset.key = n.pair;
    if (n.bid >= n.ask) tr.className = "crossed"; // books on different venues may cross each other
    const mid = (n.bid + n.ask) / 2, bps = mid ? (n.ask - n.bid) / mid * 1e4 : null;
    tr.append(cell(n.pair, "l"), cell(n.bid, "bid"), cell(n.bid_venue, "l"), cell(n.bid_quote, "l"), cell(n.ask, "ask"),
      cell(n.ask_venue, "l"), cell(n.ask_quote, "l"), cell(bps == null ? "" : bps.toFixed(2)), cell((n.venues || []).length));
    tr.children[8].title = (n.venues || []).map(v => `${v.key} ${v.bid} / ${v.ask}`).join("\n");
    return tr;
  }));
}
const riskEs = new EventSource("/events/risk?only=nbbo");
riskEs.onerror = () => { document.getElementById("nbbo-status").textContent = "reconnecting…"; };
riskEs.addEventListener("risk", ev => renderNbbo(JSON.parse(ev.data)));
