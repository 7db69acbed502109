// One underlying's options chains, pushed over /events/options/{venue}/{underlying}: a table per
// expiry and the smile (mark IV by strike), the venue's numbers beside bookstream's own.
"use strict";
const parts = location.pathname.split("/").map(decodeURIComponent); // ["", "options", venue, underlying]
const venue = parts[2], underlying = parts.slice(3).join("/");
document.getElementById("title").textContent = `${venue} · ${underlying} options`;
const sel = document.getElementById("expiry");
let chains = [];

const pct = v => v == null ? "" : (parseFloat(v) * 100).toFixed(2);
const fix = (v, n) => v == null ? "" : parseFloat(v).toFixed(n);

function render() {
  const chain = chains.find(c => c.key === sel.value) || chains[0];
  if (!chain) return;
  document.getElementById("forward").textContent =
    `forward ${chain.forward == null ? "?" : chain.forward.toFixed(2)} (${chain.forward_source}) · ` +
    `${(chain.t_years * 365).toFixed(2)} days · premiums in ${chain.premium_currency}`;
  const tb = document.querySelector("#chain tbody");
  tb.replaceChildren(...chain.strikes.map(s => {
    const c = s.call || {}, p = s.put || {}, co = c.ours || {}, po = p.ours || {};
    const vals = [c.bid, c.ask, c.mark, pct(c.mark_iv), pct(co.mark_iv), fix(c.delta, 4), fix(co.delta, 4), s.strike,
      fix(po.delta, 4), fix(p.delta, 4), pct(po.mark_iv), pct(p.mark_iv), p.mark, p.bid, p.ask];
    const tr = document.createElement("tr");
    tr.dataset.strike = s.strike;
    vals.forEach((v, j) => { const td = document.createElement("td"); td.textContent = v ?? ""; if (j === 7) td.className = "strike"; tr.append(td); });
    return tr;
  }));
  smile(chain);
}

function smile(chain) {
  const cv = document.getElementById("smile"), g = cv.getContext("2d"), W = cv.width, H = cv.height;
  g.clearRect(0, 0, W, H);
  const pts = [];
  for (const s of chain.strikes) for (const side of [s.call, s.put]) {
    if (!side) continue;
    const k = parseFloat(s.strike);
    if (side.mark_iv != null) pts.push([k, parseFloat(side.mark_iv), "venue"]);
    if (side.ours && side.ours.mark_iv != null) pts.push([k, side.ours.mark_iv, "ours"]);
  }
  if (!pts.length) return;
  const ks = pts.map(p => p[0]), vs = pts.map(p => p[1]);
  const k0 = Math.min(...ks), k1 = Math.max(...ks), v0 = Math.min(...vs), v1 = Math.max(...vs);
  const x = k => (k - k0) / ((k1 - k0) || 1) * (W - 60) + 40, y = v => H - 20 - (v - v0) / ((v1 - v0) || 1) * (H - 40);
  for (const [k, v, who] of pts) {
    g.beginPath(); g.arc(x(k), y(v), who === "venue" ? 4 : 6, 0, 2 * Math.PI);
    if (who === "venue") { g.fillStyle = "#58a6ff"; g.fill(); } else { g.strokeStyle = "#d29922"; g.stroke(); }
  }
  g.fillStyle = "#7b8794";
  g.fillText(`${(v1 * 100).toFixed(1)}%`, 2, 14); g.fillText(`${(v0 * 100).toFixed(1)}%`, 2, H - 22);
  g.fillText(String(k0), 40, H - 4); g.fillText(String(k1), W - 60, H - 4);
  cv.dataset.points = pts.length;
}

sel.onchange = render;
const es = new EventSource(`/events/options/${encodeURIComponent(venue)}/${encodeURIComponent(underlying)}`);
es.onerror = () => { document.getElementById("status").textContent = "reconnecting…"; };
es.addEventListener("options", ev => {
  chains = JSON.parse(ev.data).chains;
  const st = document.getElementById("status");
  st.textContent = chains.length ? `${chains.length} expiries` : "no chain on this worker yet";
  const keys = chains.map(c => c.key);
  if ([...sel.options].map(o => o.value).join() !== keys.join()) {
    const was = sel.value;
    sel.replaceChildren(...chains.map(c => { const o = document.createElement("option"); o.value = c.key; o.textContent = c.expiry.slice(0, 10); return o; }));
    if (keys.includes(was)) sel.value = was;
  }
  render();
});
