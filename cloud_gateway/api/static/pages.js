// Edgemart dashboard: the read pages — a campaign with its trends and explanations, model
// rollouts and experiments, the devices and one device.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgBox(width, height, label) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", "100%"); svg.setAttribute("style", `max-width:${width}px`);
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", label);
  svg.add = (tag, attrs, text) => {
    const n = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n); return n;
  };
  return svg;
}

const hourLabel = (iso) => iso.slice(11, 16);

// Impressions per hour as bars, clicks and conversions as lines (one count axis).
function countsChart(series) {
  const width = 640, height = 190, left = 36, bottom = 22, top = 18;
  const svg = svgBox(width, height, "Impressions (bars), clicks and conversions (lines) per hour");
  const max = Math.max(1, ...series.map((h) => h.impressions), ...series.map((h) => h.clicks + h.conversions));
  const step = (width - left - 8) / series.length;
  const y = (v) => height - bottom - (height - bottom - top) * (v / max);
  svg.add("text", { x: 0, y: 12, "font-size": 12, fill: "#5b6475" }, "per hour, UTC: bars impressions, blue clicks, green conversions");
  svg.add("text", { x: 0, y: y(max) + 4, "font-size": 10, fill: "#5b6475" }, String(max));
  svg.add("line", { x1: left, x2: width, y1: y(0), y2: y(0), stroke: "#c4c9d4" });
  series.forEach((h, i) => {
    const x = left + i * step;
    svg.add("rect", { x: x + 1, y: y(h.impressions), width: Math.max(1, step - 2), height: y(0) - y(h.impressions), fill: "#c9d6f2" });
    if (i % Math.ceil(series.length / 12) === 0) {  // at most 12 labels: they fit
      svg.add("text", { x, y: height - 6, "font-size": 9, fill: "#5b6475" }, hourLabel(h.hour));
    }
  });
  for (const [key, colour] of [["clicks", "#1f4aa8"], ["conversions", "#11652a"]]) {
    const points = series.map((h, i) => `${left + i * step + step / 2},${y(h[key])}`).join(" ");
    svg.add("polyline", { points, fill: "none", stroke: colour, "stroke-width": 2, "data-series": key });
  }
  return svg;
}

// Click rate per hour with its 95% interval (hours without impressions have no rate).
function rateTrendChart(series) {
  const width = 640, height = 150, left = 36, bottom = 22, top = 18;
  const svg = svgBox(width, height, "Click rate per hour with 95% intervals");
  const rated = series.filter((h) => h.ctr.n > 0);
  const max = Math.max(0.01, ...rated.map((h) => h.ctr.high));
  const step = (width - left - 8) / series.length;
  const y = (v) => height - bottom - (height - bottom - top) * (v / max);
  svg.add("text", { x: 0, y: 12, "font-size": 12, fill: "#5b6475" }, "click rate per hour (dot: rate, line: 95% range)");
  svg.add("text", { x: 0, y: y(max) + 4, "font-size": 10, fill: "#5b6475" }, pct(max));
  svg.add("line", { x1: left, x2: width, y1: y(0), y2: y(0), stroke: "#c4c9d4" });
  series.forEach((h, i) => {
    if (!h.ctr.n) return;
    const x = left + i * step + step / 2;
    svg.add("line", { x1: x, x2: x, y1: y(h.ctr.low), y2: y(h.ctr.high), stroke: "#1d2330", "stroke-width": 2 });
    svg.add("circle", { cx: x, cy: y(h.ctr.value), r: 3, fill: "#4c7bd9", "data-hour": h.hour });
  });
  return svg;
}

function rangeText(r) { return r.n ? `${pct(r.value)} (${pct(r.low)}–${pct(r.high)})` : NONE; }

function trendTable(series) {
  const rows = series.filter((h) => h.impressions || h.clicks || h.conversions).reverse();
  if (!rows.length) return el("p", { class: "note", "data-metric": "trend-empty" }, "Nothing reported in these hours yet.");
  return el("table", { "data-metric": "trend-table" },
    el("caption", {}, "Hours with outcomes, newest first (UTC); rates with their 95% range"),
    el("tr", {}, ...["hour", "impressions", "clicks", "conversions", "click rate", "conversion rate"].map((t) => el("th", { scope: "col" }, t))),
    ...rows.map((h) => el("tr", { "data-hour": h.hour },
      el("td", {}, h.hour.slice(0, 13).replace("T", " ") + ":00"), el("td", {}, h.impressions), el("td", {}, h.clicks),
      el("td", {}, h.conversions), el("td", {}, rangeText(h.ctr)), el("td", {}, rangeText(h.conversion_rate)))));
}

function explanationsBox(x) {
  const box = el("div", { class: "card", "data-metric": "explain-detail" }, el("h3", {}, "Why devices were or were not shown it"));
  if (!x || !x.reached) { box.append(el("p", { class: "note" }, "No device has reported a decision about it yet.")); return box; }
  box.append(el("p", { "data-metric": "explain-sentence" }, x.summary.charAt(0).toUpperCase() + x.summary.slice(1) + "."));
  const held = Object.entries(x.held).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  box.append(el("table", { "data-metric": "explain-table" },
    el("tr", {}, el("th", { scope: "col" }, "devices"), el("th", { scope: "col" }, "count"), el("th", { scope: "col" }, "decisions")),
    el("tr", {}, el("td", {}, "reached"), el("td", {}, x.reached), el("td", {}, "")),
    el("tr", {}, el("td", {}, "shown"), el("td", {}, x.shown), el("td", {}, x.decisions.shown || 0)),
    ...held.map(([stage, n]) => el("tr", { "data-stage": stage }, el("td", {}, stage.replace(/_/g, " ")), el("td", {}, n), el("td", {}, x.decisions[stage] || 0)))));
  return box;
}

let trendHours = 24;
// Trends are read once a minute (a row per device and hour: the costlier query), the card
// every 5 s with the other pages.
const TREND_TTL_MS = 60000;
let trendCache = { key: null, at: 0, body: null };

async function trendsOf(id) {
  const key = `${id}/${trendHours}`;
  if (trendCache.key !== key || Date.now() - trendCache.at > TREND_TTL_MS) {
    trendCache = { key, at: Date.now(), body: await api(`/v1/campaigns/${id}/trends?hours=${trendHours}`) };
  }
  return trendCache.body;
}

async function showCampaign(id) {
  const [c, s, t] = await Promise.all([api(`/v1/campaigns/${id}`), api(`/v1/campaigns/${id}/stats`), trendsOf(id)]);
  const social = await socialBoxes(c);
  const hours = el("select", { id: "trend-hours", onchange: (e) => { trendHours = Number(e.target.value); refresh(); } },
    ...[24, 72, 168].map((h) => el("option", { value: h }, `last ${h} hours`)));
  hours.value = String(trendHours);
  const totals = t.series.reduce((a, h) => ({ i: a.i + h.impressions, c: a.c + h.clicks, v: a.v + h.conversions }), { i: 0, c: 0, v: 0 });
  $("#page-campaign").replaceChildren(
    el("p", {}, el("a", { href: "#/" }, "← all campaigns")),
    campaignCard(c, s),
    ...social,
    explanationsBox(s.explanations),
    el("div", { class: "card", "data-metric": "trends" },
      el("h3", {}, "Trends"), el("label", { for: "trend-hours" }, "Show "), hours,
      el("div", { class: "numbers" },
        metric("impressions in these hours", totals.i, "trend-impressions"),
        metric("clicks", totals.c, "trend-clicks"),
        metric("conversions", totals.v, "trend-conversions")),
      countsChart(t.series), rateTrendChart(t.series), trendTable(t.series)));
}

function kv(pairs) {
  return el("dl", { class: "kv" }, ...pairs.flatMap(([k, v, name]) => [el("dt", {}, k), el("dd", name ? { "data-field": name } : {}, v ?? NONE)]));
}

function experimentBox(x) {
  const box = el("div", { class: "experiment", "data-experiment": x.id });
  box.append(el("h4", {}, `Experiment: v${x.control} (control) vs v${x.candidate} (candidate) `,
    el("span", { class: "state " + x.state, "data-field": "experiment-state" }, x.state.replace("_", " "))));
  box.append(el("p", { class: "note", "data-field": "verdict" },
    (x.verdict ? "Verdict: " + x.verdict : "No verdict yet: the test is still collecting") +
    ` · candidate share ${pct(x.share)} · started ${x.started_at}` + (x.decided_at ? ` · decided ${x.decided_at}` : "")));
  box.append(el("table", { "data-metric": "arms" },
    el("tr", {}, ...["model", "devices", "impressions", "clicks", "conversions", "click rate (95%)", "conversion (95%)", "revenue / 1,000"].map((h) => el("th", { scope: "col" }, h))),
    ...x.arms.map((a) => el("tr", { "data-arm": a.model_version },
      el("td", {}, `v${a.model_version}` + (a.model_version === x.candidate ? " (candidate)" : " (control)")),
      el("td", {}, a.devices), el("td", {}, a.impressions), el("td", {}, a.clicks), el("td", {}, a.conversions),
      el("td", {}, a.impressions ? `${pct(a.ctr.value)} (${pct(a.ctr.low)}–${pct(a.ctr.high)})` : NONE),
      el("td", {}, a.impressions ? `${pct(a.conversion.value)} (${pct(a.conversion.low)}–${pct(a.conversion.high)})` : NONE),
      el("td", {}, Number(a.revenue_per_1000).toFixed(2))))));
  if (x.stop) {
    box.append(el("p", { class: "note", "data-field": "stop" },
      `Stopped by ${x.stop.by} (${x.stop.outcome === "promote" ? "promoted" : "rolled back"}): ${x.stop.reason}`));
  }
  if (x.state === "running") box.append(stopForm(x));
  return box;
}

// Stop a running experiment by hand: roll the candidate back or promote it now, with a
// reason; the API's errors go next to the reason (or on top), as the other forms show them.
function stopForm(x) {
  const form = el("form", { class: "stock", "data-stop-for": x.id, novalidate: "" });
  const send = (outcome) => async () => {
    try {
      await api(`/v1/experiments/${encodeURIComponent(x.id)}/stop`, { method: "POST", json: { outcome, reason: value(form, "reason") } });
      showErrors(form, []);
      notify(`Experiment ${x.id} stopped: ${outcome === "promote" ? "candidate promoted" : "candidate rolled back"}.`);
      refresh();
    } catch (err) {
      showErrors(form, err.errors && err.errors.length ? err.errors : [{ loc: "(root)", msg: err.message }]);
      notify(`Experiment not stopped: ${err.message}`, true);
      form.querySelector("input").focus();  // the live refresh leaves a focused form alone
    }
  };
  form.addEventListener("submit", (e) => e.preventDefault());
  const reason = field("Reason", "reason", input("", { size: 30, maxlength: 500 }));
  for (const node of reason.querySelectorAll("[id]")) node.id += "-" + x.candidate;  // one per experiment
  reason.querySelector("label").htmlFor = reason.querySelector("input").id;
  reason.querySelector("input").setAttribute("aria-describedby", reason.querySelector(".error").id);
  form.append(el("p", { class: "error top", "data-error-for": "(root)", role: "alert" }), reason,
    el("button", { type: "button", "data-action": "stop-rollback", onclick: send("rollback") }, "Stop: roll back"),
    el("button", { type: "button", "data-action": "stop-promote", onclick: send("promote") }, "Stop: promote"));
  return form;
}

function modelCard(m) {
  const card = el("div", { class: "card", "data-model": m.version });
  const halted = !!m.halt;
  card.append(el("h3", {}, `${m.name} v${m.version}`,
    el("span", { class: "state " + (halted ? "halted" : "ok"), "data-field": "health-state" }, halted ? "halted" : "healthy")));
  const rollouts = Object.entries(m.rollouts || {});
  const h = m.health || {};
  card.append(kv([
    ["profiles", (m.profiles || []).join(", "), "profiles"],
    ["rollout", rollouts.length ? rollouts.map(([p, r]) => `${p}: ${r.percent}% of ${r.cohort}`).join("; ") : "not rolled out", "rollout"],
    ["devices reporting", h.reporting, "reporting"],
    ["applied", h.applied, "applied"],
    ["failed", h.failed, "failed"],
    ["rolled back", h.rolled_back, "rolled_back"],
    ["registered", `${m.registered_at} by ${m.registered_by || NONE}`],
  ]));
  if (halted) {
    card.append(el("p", { class: "note warn", "data-field": "halt" },
      `Halted ${m.halt.halted_at}: ${m.halt.reason}` + (m.halt.replacement ? `; replaced by v${m.halt.replacement}` : "")));
  }
  if (m.experiment) card.append(experimentBox(m.experiment));
  return card;
}

async function showModels() {
  const { models } = await api("/v1/models");
  const page = $("#page-models");
  page.replaceChildren(el("h2", {}, "Models: rollouts, health and experiments"));
  if (!models.length) page.append(el("p", {}, "No model registered yet (`edgemart model publish`)."));
  page.append(...models.slice().reverse().map(modelCard));
}

async function showDevices() {
  const { devices } = await api("/v1/devices");
  const page = $("#page-devices");
  const find = el("form", { class: "find", onsubmit: (e) => {
    e.preventDefault(); location.hash = "#/device/" + encodeURIComponent($("#device-id").value.trim()); } },
  el("label", { for: "device-id" }, "Device id "), el("input", { id: "device-id", type: "text" }), el("button", { type: "submit" }, "Open"));
  const table = el("table", { "data-metric": "device-table" },
    el("tr", {}, ...["device", "state", "profile", "model", "policy", "last seen"].map((h) => el("th", { scope: "col" }, h))),
    ...devices.map((d) => el("tr", { "data-device": d.device_id },
      el("td", {}, el("a", { href: "#/device/" + encodeURIComponent(d.device_id) }, d.device_id)),
      el("td", {}, d.status), el("td", {}, d.profile ?? NONE), el("td", {}, d.model_version ?? NONE),
      el("td", {}, d.policy_version ?? NONE), el("td", {}, d.last_seen ?? NONE))));
  page.replaceChildren(el("h2", {}, `Devices (${devices.length})`), find, el("div", { class: "card" }, table));
}

async function showDevice(id) {
  const page = $("#page-device");
  let d;
  try { d = await api("/v1/devices/" + encodeURIComponent(id)); } catch (err) {
    if (err.status !== 404) throw err;
    page.replaceChildren(el("p", {}, el("a", { href: "#/devices" }, "← all devices")), el("p", { "data-metric": "device-missing" }, `No device ${id} has registered with this gateway.`));
    return;
  }
  const stats = d.stats || {};
  page.replaceChildren(
    el("p", {}, el("a", { href: "#/devices" }, "← all devices")),
    el("div", { class: "card", "data-device-page": d.device_id },
      el("h3", {}, d.device_id, el("span", { class: "state " + d.status, "data-field": "status" }, d.status)),
      kv([
        ["state", d.status, "state"],
        ["last seen", d.last_seen, "last_seen"],
        ["profile", d.profile, "profile"],
        ["model version", d.model_version, "model_version"],
        ["policy version", d.policy_version === 0 ? "0 (the profile's own)" : d.policy_version, "policy_version"],
        ["outbox depth", stats.outbox_depth, "outbox_depth"],
        ["agent version", d.agent_version, "agent_version"],
        ["cohorts", (d.cohorts || []).join(", ") || NONE, "cohorts"],
        ["batches stored", d.batches, "batches"],
        ["outcomes stored", d.outcomes_stored, "outcomes_stored"],
        ["first seen", d.first_seen, "first_seen"],
        ["malformed messages", d.malformed, "malformed"],
      ])));
}
