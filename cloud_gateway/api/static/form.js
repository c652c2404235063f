// Edgemart dashboard: the campaign form (create a draft, edit a draft). No validation of its
// own: the API's field errors (`errors: [{loc, msg}]`) are shown next to the field they name.
"use strict";

const OFFER_TYPES = ["coupon", "bundle", "replenishment", "membership_perk", "group_buy", "content", "price_cut"];
// Offer fields the form shows; an edited offer keeps the others as they were.
const SHOWN = ["type", "title", "category", "surfaces", "variant", "price", "discount", "limited", "stock", "group", "cut"];
// The social terms an offer of that type shows (issue 19): [key, label, hint].
const TERMS = {
  group_buy: ["group", [["size", "Group size", "households that fill a group"], ["window_s", "Group window (s)", "seconds to fill it from its start"],
    ["price", "Group price", "each member's coupon price"]]],
  price_cut: ["cut", [["floor", "Cut floor", "the lowest price helps reach"], ["helps", "Helps to the floor", "the schedule: the price falls in this many steps"],
    ["window_s", "Cut window (s)", "seconds to collect helps from its start"]]],
};
const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);
// A number when the text is one, else the text itself: the API says what is wrong with it.
const num = (text) => (text.trim() !== "" && Number.isFinite(Number(text)) ? Number(text) : text.trim());
const localTime = (iso) => {
  if (!iso) return "";
  const d = new Date(iso);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
};

// One labelled input with the slot its errors go to; `loc` is the API's name of the field.
function field(label, loc, input, hint) {
  const id = "f-" + loc.replace(/[^a-z0-9]/gi, "-");
  input.id = id;
  input.dataset.loc = loc;
  const err = el("p", { class: "error", id: id + "-error", "data-error-for": loc });
  input.setAttribute("aria-describedby", err.id);
  const box = el("div", { class: "field" }, el("label", { for: id }, label), input);
  if (hint) box.append(el("span", { class: "hint" }, hint));
  box.append(err);
  return box;
}

const input = (value = "", attrs = {}) => el("input", { type: "text", ...attrs, value: value ?? "" });

function select(options, value) {
  const node = el("select", {}, ...options.map((o) => (Array.isArray(o) ? el("option", { value: o[0] }, o[1]) : el("option", { value: o }, o))));
  node.value = value;
  return node;
}

// `base`: the API's name of the list the offer is in (`offers`, or a wave's `waves.0.offers`).
function offerBox(form, i, o = {}, base = "offers") {
  const box = el("fieldset", { class: "offer", "data-loc": `${base}.${i}`, "data-offer": i });
  box.base = base;
  box.append(el("legend", {}, `Offer ${i + 1}`));
  if (o.id) box.dataset.offerId = o.id;
  box.original = o;  // fields the form does not show (body, currency, priority, window) are kept
  const p = `${base}.${i}`;
  const limited = el("input", { type: "checkbox" });
  limited.checked = !!o.limited;
  box.append(
    field("Title", `${p}.title`, input(o.title)),
    field("Type", `${p}.type`, select(OFFER_TYPES, o.type || "coupon")),
    field("Category", `${p}.category`, input(o.category, { placeholder: "purifier_filter" })),
    field("Surfaces", `${p}.surfaces`, input((o.surfaces || []).join(", "), { placeholder: "tv_home_banner" }), "comma-separated"),
    field("Variant", `${p}.variant`, input(o.variant || "a")),
    field("Price", `${p}.price`, input(o.price ?? "", { inputmode: "decimal" })),
    field("Discount (0–1)", `${p}.discount`, input(o.discount ?? "", { inputmode: "decimal" })),
    field("Limited stock", `${p}.limited`, limited),
    field("Coupons in stock", `${p}.stock`, input(o.stock ?? "", { inputmode: "numeric" }), "limited offers only"),
  );
  // group and cut terms: shown for their offer type (the API says what is missing or wrong)
  for (const [type, [key, rows]] of Object.entries(TERMS)) {
    const terms = el("div", { class: "terms", "data-terms": key },
      ...rows.map(([name, label, hint]) => field(label, `${p}.${key}.${name}`, input((o[key] || {})[name] ?? "", { inputmode: "decimal" }), hint)),
      el("p", { class: "error", "data-error-for": `${p}.${key}` }));
    terms.hidden = (o.type || "coupon") !== type;
    box.append(terms);
  }
  const cut = box.querySelector('[data-terms="cut"]');
  cut.insertBefore(el("p", { class: "audience", "data-metric": "schedule", "aria-live": "polite" }, "Price after each help: " + NONE), cut.lastChild);
  box.addEventListener("input", (e) => {
    if (e.target.closest('[data-terms="cut"]') || e.target.dataset.loc === `${box.dataset.loc}.price`) scheduleSoon(box);
  });
  if (o.cut) scheduleSoon(box);
  box.querySelector(`[data-loc="${p}.type"]`).addEventListener("change", (e) => {
    for (const [type, [key]] of Object.entries(TERMS)) box.querySelector(`[data-terms="${key}"]`).hidden = e.target.value !== type;
  });
  box.append(el("p", { class: "error", "data-error-for": p }));
  const remove = el("button", { type: "button", "data-action": "remove-offer", onclick: () => {
    const parent = box.parentElement; box.remove(); renumber(parent, base);
  } }, "Remove offer");
  box.append(remove);
  return box;
}

// The published price-cut schedule for the terms typed, from the gateway (debounced): the
// price after each help, or the API's errors next to the fields they name.
function scheduleSoon(box) {
  clearTimeout(box.scheduleTimer);
  box.scheduleTimer = setTimeout(async () => {
    const p = box.dataset.loc;
    const out = box.querySelector("[data-metric=schedule]");
    const q = { price: value(box, `${p}.price`), floor: value(box, `${p}.cut.floor`), helps: value(box, `${p}.cut.helps`) };
    const scope = [`${p}.price`, `${p}.cut.floor`, `${p}.cut.helps`];
    if (Object.values(q).some((v) => v === "")) { out.textContent = "Price after each help: " + NONE; return; }
    try {
      const s = await api("/v1/social/cut-schedule?" + new URLSearchParams(q));
      showErrors(box, [], scope);
      out.textContent = "Price after each help: " + s.prices.map((x) => x.toFixed(2)).join(" → ");
    } catch (err) {
      const where = { price: `${p}.price`, floor: `${p}.cut.floor`, helps: `${p}.cut.helps` };
      showErrors(box, (err.errors || []).map((e) => ({ loc: where[e.loc] || `${p}.cut`, msg: e.msg })), scope);
      out.textContent = "Price after each help: " + NONE;
    }
  }, 250);
}

// Offers keep their API names (`offers.0.title`...) in order after one is removed.
function renumber(parent, base = "offers") {
  const boxes = [...parent.querySelectorAll("fieldset.offer")].filter((b) => b.base === base);
  boxes.forEach((box, i) => {
    const old = box.dataset.loc;
    box.dataset.loc = `${base}.${i}`;
    box.dataset.offer = i;
    box.querySelector("legend").textContent = `Offer ${i + 1}`;
    for (const node of box.querySelectorAll("[data-loc],[data-error-for]")) {
      for (const key of ["loc", "errorFor"]) {
        if (node.dataset[key] && node.dataset[key].startsWith(old + ".")) node.dataset[key] = `${base}.${i}` + node.dataset[key].slice(old.length);
        else if (node.dataset[key] === old) node.dataset[key] = `${base}.${i}`;
      }
    }
  });
}

function value(form, loc) { const n = form.querySelector(`[data-loc="${loc}"]`); return n ? n.value.trim() : ""; }

// The audience part of the form as the API reads it (cohorts, targeting, holdout).
function audienceBody(form) {
  const targeting = {};
  for (const key of ["profiles", "regions", "devices"]) {
    const v = list(value(form, `targeting.${key}`));
    if (v.length) targeting[key] = v;
  }
  const tiers = list(value(form, "targeting.member_tiers")).map(num);
  if (tiers.length) targeting.member_tiers = tiers;
  const kind = value(form, "targeting.rules.0.kind");
  if (kind) {
    const rule = { kind, category: value(form, "targeting.rules.0.category") };
    const amount = value(form, "targeting.rules.0.amount");
    rule[kind === "no_purchase" ? "days" : "level"] = num(amount);
    targeting.rules = [rule];
  }
  if (form.extraRules && form.extraRules.length) targeting.rules = [...(targeting.rules || []), ...form.extraRules];
  const body = { cohorts: list(value(form, "cohorts")) };
  if (Object.keys(targeting).length) body.targeting = targeting;
  const holdout = value(form, "holdout");
  if (holdout) body.holdout = num(holdout);
  return body;
}

function campaignBody(form) {
  const body = { name: value(form, "name"), ...audienceBody(form) };
  for (const key of ["starts_at", "ends_at"]) {
    const v = value(form, key);
    if (v) body[key] = Number.isNaN(Date.parse(v)) ? v : new Date(v).toISOString();
  }
  const caps = {};
  for (const key of ["per_day", "campaign_per_day"]) { const v = value(form, `caps.${key}`); if (v) caps[key] = num(v); }
  if (Object.keys(caps).length) body.caps = caps;
  const variants = list(value(form, "variants"));
  if (variants.length) body.variants = Object.fromEntries(variants.map((pair) => { const [k, w = ""] = pair.split("="); return [k.trim(), num(w)]; }));
  body.offers = [...form.querySelectorAll("fieldset.offer")].map(offerBody);
  return body;
}

// One offer box as the API reads it; its group or cut terms when its type has them.
function offerBody(box) {
  const p = box.dataset.loc;
  const o = { ...(box.original || {}) };
  for (const key of [...SHOWN, "caps"]) delete o[key];  // the form's own, and the caps row above
  Object.assign(o, { type: value(box, `${p}.type`), title: value(box, `${p}.title`), category: value(box, `${p}.category`),
    surfaces: list(value(box, `${p}.surfaces`)), variant: value(box, `${p}.variant`) || "a" });
  for (const key of Object.keys(o)) if (o[key] === null) delete o[key];
  for (const key of ["price", "discount", "stock"]) { const v = value(box, `${p}.${key}`); if (v) o[key] = num(v); }
  if (box.querySelector(`[data-loc="${p}.limited"]`).checked) o.limited = true;
  const terms = TERMS[o.type];
  if (terms) {
    const [key, rows] = terms;
    const t = {};
    for (const [name] of rows) { const v = value(box, `${p}.${key}.${name}`); if (v) t[name] = num(v); }
    if (Object.keys(t).length) o[key] = t;
  }
  return o;
}

// Put each API error next to the field it names (or the nearest enclosing one: `cohorts.0`
// goes to `cohorts`, `offers.0` to the offer's box); what names no field goes on top.
// `scope`: only locations under these prefixes are cleared and shown (the audience preview).
function showErrors(form, errors, scope = null) {
  const inScope = (loc) => !scope || scope.some((s) => loc === s || loc.startsWith(s + "."));
  for (const slot of form.querySelectorAll("[data-error-for]")) {
    if (inScope(slot.dataset.errorFor)) slot.textContent = "";
  }
  for (const node of form.querySelectorAll("[aria-invalid]")) if (inScope(node.dataset.loc || "")) node.removeAttribute("aria-invalid");
  const top = form.querySelector("[data-error-for='(root)']");
  for (const error of errors) {
    const msg = error.msg;
    // a rule's `days` or `level` (under its kind, for a union) is the form's one amount field
    const loc = error.loc.replace(/^(targeting\.rules\.\d+)\.(no_purchase|consumable_below)\./, "$1.")
      .replace(/^(targeting\.rules\.\d+)\.(days|level)$/, "$1.amount");
    if (!inScope(loc)) continue;
    const parts = loc.split(".");
    let slot = null;
    while (parts.length && !slot) {
      slot = form.querySelector(`[data-error-for="${parts.join(".")}"]`);
      parts.pop();
    }
    slot = slot || top;
    slot.textContent = (slot.textContent ? slot.textContent + " " : "") + (slot === top && loc !== "(root)" ? `${loc}: ${msg}` : msg);
    const target = form.querySelector(`[data-loc="${slot.dataset.errorFor}"]`);
    if (target) target.setAttribute("aria-invalid", "true");
  }
}

let previewTimer = null;

// Ask the gateway whom the audience selects now (debounced as the operator types).
function previewSoon(form, campaignId) {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(async () => {
    const out = form.querySelector("[data-metric=audience]");
    const scope = ["cohorts", "targeting", "holdout"];
    try {
      const a = await api("/v1/campaigns/audience", { method: "POST", json: { ...audienceBody(form), ...(campaignId ? { campaign_id: campaignId } : {}) } });
      showErrors(form, [], scope);
      out.textContent = `Audience now: ${a.devices} of ${a.registered} registered device(s)` +
        (a.held_out ? `, ${a.held_out} of them held out` : "");
      out.dataset.devices = a.devices;
    } catch (err) {
      showErrors(form, err.errors || [], scope);
      out.textContent = "Audience now: " + NONE + " (" + err.message + ")";
      delete out.dataset.devices;
    }
  }, 250);
}

async function showForm(id) {
  const page = $("#page-form");
  // the last form goes at once: typing into it while the campaign loads would be lost
  page.replaceChildren(el("p", { class: "loading" }, "Loading…"));
  const c = id ? await api(`/v1/campaigns/${id}`) : null;
  if (c && c.state !== "draft") {
    page.replaceChildren(el("h2", { id: "form-title" }, c.name), el("p", {}, `This campaign is ${c.state}: only a draft can be edited.`));
    return;
  }
  const t = (c && c.targeting) || {};
  const rule = (t.rules || [])[0] || {};
  const caps = (c && c.offers[0] && c.offers[0].caps) || {};
  const form = el("form", { id: "campaign-form", novalidate: "", "data-campaign": c ? c.id : "" });
  form.extraRules = (t.rules || []).slice(1);  // kept on save; the form edits the first
  const kind = select([["", "(none)"], ["no_purchase", "no purchase in N days"], ["consumable_below", "consumable below a level"]], rule.kind || "");
  form.append(
    el("p", { class: "error top", "data-error-for": "(root)", role: "alert" }),
    field("Name", "name", input(c ? c.name : "")),
    el("fieldset", { "data-loc": "targeting" }, el("legend", {}, "Audience"),
      field("Cohorts", "cohorts", input(c ? c.cohorts.join(", ") : "all"), "comma-separated: all, profile:tv, region:cn-east"),
      field("Profiles", "targeting.profiles", input((t.profiles || []).join(", ")), "comma-separated"),
      field("Regions", "targeting.regions", input((t.regions || []).join(", ")), "comma-separated"),
      field("Member tiers", "targeting.member_tiers", input((t.member_tiers || []).join(", ")), "0–3, comma-separated"),
      field("Devices", "targeting.devices", input((t.devices || []).join(", ")), "device ids, comma-separated"),
      field("Rule", "targeting.rules.0.kind", kind, "no purchase in N days, or a consumable below a level"),
      field("Rule category", "targeting.rules.0.category", input(rule.category)),
      field("Rule days or level", "targeting.rules.0.amount", input(rule.days ?? rule.level ?? "")),
      el("p", { class: "error", "data-error-for": "targeting" }),
      field("Holdout share", "holdout", input(c ? c.holdout : "0", { inputmode: "decimal" }), "0–0.5 of the audience shown nothing, to measure uplift"),
      el("p", { class: "audience", "data-metric": "audience", "aria-live": "polite" }, "Audience now: " + NONE)),
    el("fieldset", {}, el("legend", {}, "Schedule and caps"),
      field("Starts", "starts_at", input(localTime(c && c.starts_at), { type: "datetime-local" }), "empty: at launch"),
      field("Ends", "ends_at", input(localTime(c && c.ends_at), { type: "datetime-local" }), "empty: open end"),
      field("Per offer per day", "caps.per_day", input(caps.per_day ?? "", { inputmode: "numeric" }), "impressions per device, every offer"),
      field("Per campaign per day", "caps.campaign_per_day", input(caps.campaign_per_day ?? "", { inputmode: "numeric" }), "impressions per device"),
      field("Variant weights", "variants", input(Object.entries((c && c.variants) || {}).map(([k, w]) => `${k}=${w}`).join(", ")), "a=1, b=1 (empty: equal)")),
  );
  const offers = el("div", { class: "offers-box" });
  (c ? c.offers : [{}]).forEach((o, i) => offers.append(offerBox(form, i, o)));
  form.append(offers,
    el("button", { type: "button", "data-action": "add-offer", onclick: () => {
      offers.append(offerBox(form, offers.querySelectorAll("fieldset.offer").length)); } }, "Add offer"),
    el("button", { type: "submit", "data-action": "save" }, c ? "Save draft" : "Create draft"));
  form.addEventListener("input", (e) => {
    if (e.target.closest("[data-loc=targeting]")) previewSoon(form, id);
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = campaignBody(form);
    try {
      const saved = await api(id ? `/v1/campaigns/${id}` : "/v1/campaigns", { method: id ? "PUT" : "POST", json: body });
      showErrors(form, []);
      notify(`${saved.name}: draft ${id ? "saved" : "created"}; audience now ${saved.audience.devices} device(s). Launch it from the list.`);
      location.hash = "#/";
    } catch (err) {
      showErrors(form, err.errors && err.errors.length ? err.errors : [{ loc: "(root)", msg: err.message }]);
      notify(`Not saved: ${err.message}`, true);
    }
  });
  page.replaceChildren(el("h2", { id: "form-title" }, c ? `Edit ${c.name}` : "New campaign"), form);
  previewSoon(form, id);
}
