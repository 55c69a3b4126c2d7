// The live page: one /ws_ctl connection, plain DOM, no framework. Every value from the server is shown
// through textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  ws: null, market: null, runner: null, kind: "pair", markets: [], marketCount: null,
  cid: 1, commands: new Map(), backoff: 250, ordersAsked: 0, ordersTimer: null,
};
const MAX_TAPE = 50;
const MAX_LOG = 100;

function log(text, cls) {
  const li = document.createElement("li");
  li.textContent = new Date().toLocaleTimeString() + " " + text;
  if (cls) li.className = cls;
  const ol = $("log");
  ol.prepend(li);
  while (ol.children.length > MAX_LOG) ol.lastChild.remove();
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.append(td);
  return td;
}

function connect() {
  const params = new URLSearchParams({ depth: "10" });
  if (state.market) params.set("market_id", state.market);
  if (state.runner) params.set("runner", state.runner);
  const key = $("api-key").value.trim();
  if (key) params.set("api_key", key);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws_ctl?${params}`);
  state.ws = ws;
  ws.onopen = () => {
    state.backoff = 250;
    $("conn").textContent = "connected";
    $("conn").className = "ok";
    send({ type: "list_markets" });
  };
  ws.onmessage = (ev) => {
    let frame;
    try { frame = JSON.parse(ev.data); } catch { return; }
    handle(frame);
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    $("conn").textContent = `disconnected (${ev.code}${ev.reason ? " " + ev.reason : ""})`;
    $("conn").className = "bad";
    state.backoff = Math.min(state.backoff * 2, 5000);
    setTimeout(connect, state.backoff);
  };
}

function reconnect() {
  const old = state.ws;
  state.ws = null;
  if (old) old.close();
  connect();
}

function send(frame, what) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
    log("not connected", "error");
    return null;
  }
  frame.correlation_id = "p" + state.cid++;
  state.commands.set(frame.correlation_id, what || frame.type);
  state.ws.send(JSON.stringify(frame));
  return frame.correlation_id;
}

function account() {
  return $("account").value.trim();
}

function handle(f) {
  switch (f.type) {
    case "snapshot": renderSnapshot(f); askOrdersSoon(); break;
    case "trade": renderTrade(f); break;
    case "status": renderStatus(f); break;
    case "market_list": renderMarkets(f.markets); break;
    case "subscribed": clearBook(); break;
    case "orders": renderOrders(f); break;
    case "ack": break;
    case "order_response": {
      const what = state.commands.get(f.correlation_id) || "command";
      state.commands.delete(f.correlation_id);
      if (f.rejected) {
        log(`${what}: rejected ${f.rejected.reason} (${f.rejected.detail})`, "error");
      } else {
        log(`${what}: ` + f.events.map((e) => e.type).join(", "));
      }
      if (f.events.some((e) => e.type === "market_created" || e.type === "runner_added")) send({ type: "list_markets" });
      askOrders();
      break;
    }
    case "error": {
      const what = state.commands.get(f.correlation_id) || "";
      state.commands.delete(f.correlation_id);
      log(`${what} error ${f.error}: ${f.detail}`, "error");
      break;
    }
    default: break;
  }
}

function renderStatus(f) {
  const lease = f.lease ? `engine ${f.lease.holder}` : "no engine";
  $("status").textContent = `evt ${f.evt_seq} · markets ${f.markets ?? "?"} · ${lease}`;
  if (f.markets !== null && f.markets !== state.marketCount) {
    if (state.marketCount !== null) send({ type: "list_markets" });
    state.marketCount = f.markets;
  }
}

function renderMarkets(markets) {
  state.markets = markets;
  state.marketCount = markets.length;
  const ul = $("markets");
  ul.replaceChildren();
  for (const m of markets) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.market = m.market_id;
    b.textContent = `${m.market_id} (${m.kind}, ${m.state})`;
    if (m.market_id === state.market) b.className = "current";
    b.onclick = () => choose(m.market_id);
    li.append(b);
    ul.append(li);
  }
}

function choose(marketId) {
  const m = state.markets.find((x) => x.market_id === marketId);
  state.market = marketId;
  state.kind = m ? m.kind : "pair";
  const runners = m ? m.runners : [];
  state.runner = runners.length ? runners[0].runner_id : null;
  const sel = $("runner");
  sel.replaceChildren();
  for (const r of runners) {
    const o = document.createElement("option");
    o.value = r.runner_id;
    o.textContent = r.label || r.runner_id;
    sel.append(o);
  }
  sel.hidden = runners.length === 0;
  const side = $("side");
  side.replaceChildren();
  for (const s of state.kind === "odds" ? ["back", "lay"] : ["buy", "sell"]) {
    const o = document.createElement("option");
    o.textContent = s;
    side.append(o);
  }
  $("market-title").textContent = marketId;
  for (const b of $("markets").querySelectorAll("button")) {
    b.className = b.dataset.market === marketId ? "current" : "";
  }
  $("tape").tBodies[0].replaceChildren();
  subscribe();
}

function subscribe() {
  const frame = { type: "subscribe", market_id: state.market, depth: 10 };
  if (state.runner) frame.runner = state.runner;
  send(frame);
}

function clearBook() {
  $("ladder").tBodies[0].replaceChildren();
  $("at-seq").textContent = "";
}

// Direct qty, and in a two_runner market the other runner's offer at its implied price as "~n" (italic, grey).
function qtyCell(row, lvl, cls) {
  const td = cell(row, lvl.qty ? lvl.qty : "", cls);
  if (lvl.implied_qty) {
    const i = document.createElement("i");
    i.className = "implied";
    i.title = "implied from the other runner's orders (matched at the exact price)";
    i.textContent = ` ~${lvl.implied_qty}`;
    td.append(i);
  }
  return td;
}

function renderSnapshot(f) {
  if (f.market_id !== state.market) return;
  const tbody = $("ladder").tBodies[0];
  tbody.replaceChildren();
  $("at-seq").textContent = `at ${f.at_seq}`;
  const ladder = (f.ladders || []).find((l) => !state.runner || l.runner === state.runner) || (f.ladders || [])[0];
  if (!ladder) return;
  $("bid-head").textContent = ladder.bid_side;
  $("ask-head").textContent = ladder.ask_side;
  for (const lvl of [...ladder.asks].reverse()) {
    const tr = document.createElement("tr");
    tr.className = "ask";
    cell(tr, "", "bid");
    cell(tr, lvl.price, "price");
    qtyCell(tr, lvl, "ask");
    tbody.append(tr);
  }
  for (const lvl of ladder.bids) {
    const tr = document.createElement("tr");
    tr.className = "bid";
    qtyCell(tr, lvl, "bid");
    cell(tr, lvl.price, "price");
    cell(tr, "", "ask");
    tbody.append(tr);
  }
}

function renderTrade(f) {
  if (f.market_id !== state.market) return;
  const tbody = $("tape").tBodies[0];
  const tr = document.createElement("tr");
  tr.className = "trade";
  tr.dataset.tradeId = String(f.trade_id);
  cell(tr, f.seq);
  cell(tr, f.implied ? `${f.runner} ~${f.maker_runner}` : f.runner);
  cell(tr, f.price, "price");
  cell(tr, f.qty, "qty");
  cell(tr, f.taker_side);
  tbody.prepend(tr);
  while (tbody.children.length > MAX_TAPE) tbody.lastChild.remove();
}

function askOrders() {
  if (!state.market || !account()) return;
  state.ordersAsked = Date.now();
  send({ type: "orders", market_id: state.market, account_id: account() });
}

function askOrdersSoon() {
  // Snapshots come up to 5 a second; the order list follows at most once a second.
  if (state.ordersTimer) return;
  const wait = Math.max(0, 1000 - (Date.now() - state.ordersAsked));
  state.ordersTimer = setTimeout(() => { state.ordersTimer = null; askOrders(); }, wait);
}

function renderOrders(f) {
  if (f.account_id !== account()) return;
  const tbody = $("orders").tBodies[0];
  tbody.replaceChildren();
  for (const o of f.orders) {
    const tr = document.createElement("tr");
    tr.dataset.orderId = String(o.order_id);
    cell(tr, o.order_id);
    cell(tr, o.runner);
    cell(tr, o.side);
    cell(tr, o.price, "price");
    cell(tr, o.open_qty);
    cell(tr, o.status);
    const td = cell(tr, "");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "cancel";
    b.textContent = "cancel";
    b.onclick = () => send({ type: "cancel_order", market_id: o.market_id, account_id: o.account_id, order_id: o.order_id }, `cancel ${o.order_id}`);
    td.append(b);
    tbody.append(tr);
  }
}

function place(ev) {
  ev.preventDefault();
  if (!state.market) { log("choose a market first", "error"); return; }
  const frame = {
    type: "place_order", market_id: state.market, account_id: account(),
    client_order_id: "web-" + Date.now().toString(36) + "-" + state.cid,
    side: $("side").value, price: parseInt($("price").value, 10), qty: parseInt($("qty").value, 10),
  };
  if (state.runner) frame.runner = state.runner;
  send(frame, `place ${frame.side} ${frame.qty}@${frame.price}`);
}

function cancelAll() {
  if (!state.market) return;
  send({ type: "cancel_all", market_id: state.market, account_id: account() }, "cancel all");
}

function create(ev) {
  ev.preventDefault();
  const frame = {
    type: "create_market", market_id: $("new-market").value.trim(), kind: $("new-kind").value,
    quote: $("new-quote").value.trim(),
  };
  if (frame.kind === "pair") frame.base = $("new-base").value.trim();
  const runners = $("new-runners").value.trim();
  if (frame.kind === "odds" && runners) {
    frame.runners = runners.split(",").map((r) => {
      const [id, label] = r.trim().split(":");
      return { runner_id: id, label: label || id };
    });
  }
  if (frame.kind === "odds" && $("new-two").checked) frame.book_type = "two_runner";
  send(frame, `create ${frame.market_id}`);
}

window.addEventListener("DOMContentLoaded", () => {
  $("place").addEventListener("submit", place);
  $("create").addEventListener("submit", create);
  $("cancel-all-btn").addEventListener("click", cancelAll);
  $("runner").addEventListener("change", () => { state.runner = $("runner").value; subscribe(); });
  $("api-key").addEventListener("change", reconnect);
  $("account").addEventListener("change", askOrders);
  connect();
});
