// Edgemart dashboard: plain JS, no build step, no network beyond this gateway's own API.
"use strict";

const KEY = "edgemart.token";
const $ = (sel) => document.querySelector(sel);

function token() { return sessionStorage.getItem(KEY) || ""; }

async function api(path, options = {}) {
  const headers = { "Authorization": "Bearer " + token(), ...(options.headers || {}) };
  if (options.json !== undefined) {
    options = { ...options, body: JSON.stringify(options.json) };
    headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, { ...options, headers });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error(body.detail || body.title || resp.statusText);
    err.status = resp.status;
    err.errors = body.errors || [];  // field-level: [{loc: "offers.0.title", msg}]
    throw err;
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const NONE = "–";  // shown where there is no data yet, never a made-up 0%

function pct(x) { return (100 * x).toFixed(1) + "%"; }

function count(x) { return x === undefined || x === null ? NONE : x; }

// A rate with its 95% interval, or "–" while it has no trials.
function rate(r) {
  if (!r || !r.n) return { value: NONE, range: "no impressions yet" };
  return { value: pct(r.value), range: `95%: ${pct(r.low)}–${pct(r.high)}` };
}

function metric(label, value, name, detail) {
  const box = el("div", { class: "metric", "data-metric": name },
    el("div", { class: "value" }, count(value)), el("div", { class: "label" }, label));
  if (detail) box.append(el("div", { class: "range" }, detail));
  return box;
}

function rateMetric(label, r, name) {
  const shown = rate(r);
  return metric(label, shown.value, name, shown.range);
}

// Horizontal bars with 95% interval whiskers, one row per variant (inline SVG).
function rateChart(title, rows) {
  const NS = "http://www.w3.org/2000/svg";
  const width = 420, rowH = 26, left = 70, top = 20;
  const height = top + rowH * rows.length + 8;
  const max = Math.max(0.01, ...rows.map((r) => r.high));
  const x = (v) => left + (width - left - 60) * (v / max);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);  // scales down on a narrow screen
  svg.setAttribute("width", "100%"); svg.setAttribute("style", `max-width:${width}px`);
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", title);
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n); return n;
  };
  add("text", { x: 0, y: 13, "font-size": 12, fill: "#5b6475" }, title + " (bar: rate, line: 95% range)");
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    add("text", { x: 0, y: y + 15, "font-size": 12 }, "variant " + r.name);
    add("rect", { x: left, y: y + 4, width: Math.max(1, x(r.value) - left), height: 14, fill: "#4c7bd9" });
    add("line", { x1: x(r.low), x2: x(r.high), y1: y + 11, y2: y + 11, stroke: "#1d2330", "stroke-width": 2 });
    add("text", { x: x(r.high) + 6, y: y + 15, "font-size": 12 }, pct(r.value));
  });
  return svg;
}

function campaignCard(c, s) {
  const card = el("div", { class: "card", "data-campaign": c.id });
  card.append(el("h3", {}, el("a", { href: `#/campaign/${c.id}`, "data-link": "details" }, c.name),
    el("span", { class: "state " + c.state, "data-state": c.state }, c.state)));
  const when = [c.starts_at && "from " + c.starts_at, c.ends_at && "until " + c.ends_at].filter(Boolean).join(" ");
  const push = s ? (s.push === "device" ? "sent to each selected device" : "sent to cohorts " + c.cohorts.join(", ")) : "";
  card.append(el("div", { class: "note" }, `${c.offers.length} offer(s) · ${push} ${when}`));
  const title = Object.fromEntries(c.offers.map((o) => [o.id, o.title]));
  card.append(el("ul", { class: "offers", "data-metric": "offers" },
    ...c.offers.map((o) => el("li", {}, o.title + (o.variant && c.offers.some((x) => x.variant !== o.variant) ? ` (variant ${o.variant})` : "")))));
  if (s) {
    if (s.idle_reason) {
      card.append(el("div", { class: "note warn", "data-metric": "idle" }, "Delivered nothing yet: " + s.idle_reason));
    }
    if (s.explanations && s.explanations.reached > 0) {
      // why devices were or were not shown it (issue 18): each reached device counted once
      card.append(el("div", { class: "note", "data-metric": "explanations" }, s.explanations.summary));
    }
    const held = s.holdout_share > 0 ? `${s.holdout_devices} device(s) held out` : "no holdout";
    card.append(el("div", { class: "numbers" },
      metric("devices reached", s.devices_pushed || s.delivered, "reached"),
      metric("offers pushed", s.pushed, "pushed"),
      metric("delivered", s.delivered, "delivered"),
      metric("impressions", s.impressions, "impressions"),
      metric("clicks", s.clicks, "clicks"),
      rateMetric("click rate", s.ctr, "ctr"),
      metric("conversions", s.conversions, "conversions"),
      rateMetric("conversion rate", s.conversion_rate, "conversion_rate"),
      metric("holdout", pct(s.holdout_share), "holdout", held),
      metric("coupons granted", s.claims_granted, "claims_granted"),
      metric("coupons refused", s.claims_refused, "claims_refused"),
    ));
    if (s.uplift) {
      card.append(el("div", { class: "note", "data-metric": "uplift" },
        `Uplift vs holdout: ${(100 * s.uplift.absolute).toFixed(2)} points ` +
        `(95% range ${(100 * s.uplift.low).toFixed(2)} to ${(100 * s.uplift.high).toFixed(2)})`));
    }
    const stock = Object.entries(s.stock || {});
    if (stock.length) {
      card.append(el("div", { class: "note", "data-metric": "stock" }, "Coupons left: " +
        stock.map(([o, v]) => `${title[o] || o}: ${v.left} of ${v.initial}`).join(", ")));
    }
    if (s.variants.length > 0 && s.impressions > 0) {
      card.append(rateChart("Click rate by variant", s.variants.map((v) => ({
        name: v.variant, value: v.ctr.value, low: v.ctr.low, high: v.ctr.high }))));
    }
  } else {
    card.append(el("div", { class: "note" }, "Results: " + NONE));
  }
  const actions = el("div", { class: "actions" });
  const act = (verb, label, confirmText) => el("button", { "data-action": verb, onclick: async (e) => {
    if (confirmText && !window.confirm(confirmText)) { notify(`${c.name}: ${label} cancelled.`); return; }
    e.target.disabled = true;
    try { await api(`/v1/campaigns/${c.id}/${verb}`, { method: "POST" }); notify(`${c.name}: ${label} done.`); }
    catch (err) { notify(`${c.name}: ${label} failed: ${err.message}`, true); }
    refresh();
  } }, label);
  if (c.state === "draft") actions.append(el("a", { href: `#/edit/${c.id}`, class: "button", "data-action": "edit" }, "Edit"));
  if (c.state === "live" || c.state === "scheduled") actions.append(act("pause", "Pause"));
  if (c.state === "draft" || c.state === "paused") actions.append(act("launch", "Launch"));
  if (c.state !== "ended") {
    actions.append(act("end", "End",
      `End "${c.name}" for good? Its offers are withdrawn from every device and it cannot be launched again.`));
  }
  card.append(actions);
  return card;
}

// What the operator did and how it went: stays until the next action (the refresh every
// 5 s writes only to #status).
function notify(text, error = false) {
  const box = $("#notice");
  box.textContent = text;
  box.className = error ? "error" : "ok";
  box.hidden = false;
}

function setStatus(text) { $("#status").textContent = text; }

async function showCampaigns() {
  const [fleet, list] = await Promise.all([api("/v1/fleet"), api("/v1/campaigns")]);
  const body = $("#fleet-body");
  body.replaceChildren(el("div", { class: "numbers" },
    metric("devices", fleet.devices, "devices"),
    metric("online now", fleet.online, "online"),
    metric("bundles awaiting receipt", fleet.bundles_awaiting_receipt, "awaiting")));
  const rows = Object.entries(fleet.by_profile).map(([p, v]) =>
    el("tr", {}, el("td", {}, p), el("td", {}, v.online || 0), el("td", {}, v.offline || 0)));
  if (rows.length) body.append(el("table", {}, el("tr", {}, el("th", {}, "profile"), el("th", {}, "online"), el("th", {}, "offline")), ...rows));
  const stats = await Promise.all(list.campaigns.map((c) => api(`/v1/campaigns/${c.id}/stats`).catch(() => null)));
  const box = $("#campaigns");
  box.replaceChildren(...list.campaigns.slice().reverse().map((c, i) => campaignCard(c, stats[list.campaigns.length - 1 - i])));
  if (!list.campaigns.length) box.append(el("p", {}, "No campaigns yet."));
}

// The pages, by the location's hash: `#/`, `#/new`, `#/edit/ID`, `#/campaign/ID`,
// `#/models`, `#/devices`, `#/device/ID`, `#/new-sale`, `#/members`. `live` pages are refreshed every 5 s; a form is
// not (it would lose what the operator is typing).
const PAGES = [
  { re: /^#?\/?$/, page: "campaigns", nav: "campaigns", live: true, show: () => showCampaigns() },
  { re: /^#\/new$/, page: "form", nav: "new", live: false, show: () => showForm(null) },
  { re: /^#\/edit\/([^/]+)$/, page: "form", nav: "campaigns", live: false, show: (id) => showForm(id) },
  { re: /^#\/campaign\/([^/]+)$/, page: "campaign", nav: "campaigns", live: true, show: (id) => showCampaign(id) },
  { re: /^#\/models$/, page: "models", nav: "models", live: true, show: () => showModels() },
  { re: /^#\/devices$/, page: "devices", nav: "devices", live: true, show: () => showDevices() },
  { re: /^#\/device\/([^/]+)$/, page: "device", nav: "devices", live: true, show: (id) => showDevice(id) },
  { re: /^#\/new-sale$/, page: "sale", nav: "new-sale", live: false, show: () => showSaleForm() },
  { re: /^#\/members$/, page: "members", nav: "members", live: true, show: () => showMembers() },
];

function currentPage() {
  const hash = location.hash || "#/";
  for (const p of PAGES) {
    const m = hash.match(p.re);
    if (m) return { ...p, arg: m[1] ? decodeURIComponent(m[1]) : undefined };
  }
  return PAGES[0];
}

let shownHash = null;

// Show the page the hash names (`force`: also a page that is not refreshed on a timer).
async function refresh(force = true) {
  const p = currentPage();
  const hash = location.hash || "#/";
  if (!force && !p.live && shownHash === hash) return;
  // not while the operator types into a live page's field (a stock change): it would be lost
  if (!force && shownHash === hash && document.activeElement && document.activeElement.matches("main input")) return;
  for (const node of document.querySelectorAll("[data-page]")) node.hidden = node.dataset.page !== p.page;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === p.nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (!token()) { setStatus("Paste an operator token to see campaigns."); return; }
  try {
    await p.show(p.arg);
    shownHash = hash;
    setStatus("Updated " + new Date().toLocaleTimeString());
  } catch (err) {
    setStatus(err.status === 401 ? "That token was not accepted." : "Could not load: " + err.message);
  }
}

$("#login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, $("#token").value.trim());
  $("#token").value = "";
  refresh();
});
$("#logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });
window.addEventListener("hashchange", () => { shownHash = null; trendCache.key = null; refresh(); });
refresh();
setInterval(() => refresh(false), 5000);
