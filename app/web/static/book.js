// One instrument: ladder, depth chart and small time series, pushed over /events/book/...
"use strict";
const parts = location.pathname.split("/").map(decodeURIComponent); // ["", "book", venue, instrument]
const venue = parts[2], instrument = parts.slice(3).join("/");
document.getElementById("title").textContent = `${venue}:${instrument}`;
const series = { spread: [], imbalance: [] }, KEEP_S = 300;

function compact(x) { return x >= 1000 ? x.toFixed(0) : x >= 1 ? x.toFixed(3).replace(/\.?0+$/, "") : x.toPrecision(4).replace(/\.?0+$/, ""); }
function cumulate(levels) { let c = 0; return levels.map(([p, s]) => [parseFloat(p), parseFloat(s), (c += parseFloat(s)), p, s]); }

function ladder(bids, asks) {
  const tb = document.querySelector("#ladder tbody"), n = Math.max(bids.length, asks.length);
  const rows = [];
  for (let i = 0; i < n; i++) {
    const b = bids[i], a = asks[i], tr = document.createElement("tr");
    const vals = [b ? compact(b[2]) : "", b ? b[4] : "", b ? b[3] : "", a ? a[3] : "", a ? a[4] : "", a ? compact(a[2]) : ""];
    const cls = ["bid", "bid", "bid", "ask", "ask", "ask"];
    vals.forEach((v, j) => { const td = document.createElement("td"); td.textContent = v; td.className = cls[j]; tr.append(td); });
    rows.push(tr);
  }
  tb.replaceChildren(...rows);
}

function depthChart(bids, asks) {
  const c = document.getElementById("depth"), g = c.getContext("2d"), W = c.width, H = c.height;
  g.clearRect(0, 0, W, H);
  if (!bids.length || !asks.length) return;
  const lo = bids[bids.length - 1][0], hi = asks[asks.length - 1][0];
  const maxc = Math.max(bids[bids.length - 1][2], asks[asks.length - 1][2]) || 1;
  const x = p => (p - lo) / ((hi - lo) || 1) * (W - 20) + 10, y = v => H - 10 - v / maxc * (H - 20);
  for (const [side, color] of [[bids, "#3fb950"], [asks, "#f85149"]]) {
    g.beginPath(); g.moveTo(x(side[0][0]), y(0));
    for (const [p, , cum] of side) g.lineTo(x(p), y(cum));
    g.lineTo(x(side[side.length - 1][0]), y(0)); g.closePath();
    g.fillStyle = color + "55"; g.strokeStyle = color; g.fill(); g.stroke();
  }
  g.fillStyle = "#7b8794"; g.fillText(String(lo), 10, H - 1); g.fillText(String(hi), W - 60, H - 1);
}

function timeSeries(id, points) {
  const c = document.getElementById(id), g = c.getContext("2d"), W = c.width, H = c.height;
  g.clearRect(0, 0, W, H);
  if (points.length < 2) return;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const vals = points.map(p => p[1]), lo = Math.min(...vals), hi = Math.max(...vals);
  g.beginPath();
  points.forEach(([t, v], i) => {
    const X = (t - t0) / ((t1 - t0) || 1) * (W - 10) + 5, Y = H - 5 - (v - lo) / ((hi - lo) || 1) * (H - 10);
    i ? g.lineTo(X, Y) : g.moveTo(X, Y);
  });
  g.strokeStyle = "#58a6ff"; g.stroke();
  g.fillStyle = "#7b8794"; g.fillText(`${lo.toPrecision(4)} … ${hi.toPrecision(4)}`, 6, 12);
}

const es = new EventSource(`/events/book/${encodeURIComponent(venue)}/${encodeURIComponent(instrument)}`);
es.onerror = () => { document.getElementById("status").textContent = "reconnecting…"; };
es.addEventListener("book", ev => {
  const b = JSON.parse(ev.data), st = document.getElementById("status");
  st.textContent = `${b.state}${b.state === "synced" ? "" : ": " + b.reason} · seq ${b.seq}`;
  st.className = "venue " + b.state;
  const bids = cumulate(b.bids), asks = cumulate(b.asks);
  ladder(bids, asks); depthChart(bids, asks);
  const now = Date.now() / 1000;
  if (b.spread_bps != null) series.spread.push([now, parseFloat(b.spread_bps)]);
  if (b.imbalance != null) series.imbalance.push([now, parseFloat(b.imbalance)]);
  for (const k in series) while (series[k].length && series[k][0][0] < now - KEEP_S) series[k].shift();
  timeSeries("spread", series.spread); timeSeries("imbalance", series.imbalance);
  tickerTable(b.ticker); tradesTape(b.trades || []);
});

function row(cells, classes) {
  const tr = document.createElement("tr");
  cells.forEach((v, j) => { const td = document.createElement("td"); td.textContent = v ?? ""; td.className = classes[j] || ""; tr.append(td); });
  return tr;
}

// The instrument's ticker fields (merged across partial tickers), only those the venue gives.
function tickerTable(t) {
  const tb = document.querySelector("#ticker tbody");
  if (!t) { tb.replaceChildren(row(["no ticker yet"], ["l"])); return; }
  const skip = new Set(["ts_exchange", "ts_recv"]);
  const rows = Object.entries(t).filter(([k, v]) => v != null && !skip.has(k)).map(([k, v]) => row([k, v], ["l", ""]));
  tb.replaceChildren(...rows);
  tb.dataset.fields = rows.length;
}

// The trades tape: newest first.
function tradesTape(trades) {
  const tb = document.querySelector("#trades tbody");
  tb.replaceChildren(...trades.slice().reverse().map(t => {
    const when = new Date(t.ts_exchange / 1e6).toISOString().slice(11, 23);
    const tr = row([when, t.side, t.price, t.size, t.unit, t.trade_id], ["l", t.side === "buy" ? "bid" : "ask", "", "", "l", "l"]);
    tr.dataset.id = t.trade_id;
    return tr;
  }));
}
