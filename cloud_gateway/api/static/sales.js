// Edgemart dashboard: social commerce (issue 19) — the live-sale form (waves of limited
// offers, each with its stock), stock added or pulled during a sale, and the live figures
// per wave, per group-buy and price-cut offer, and per member tier.
"use strict";

const nowLocal = (minutes = 0) => localTime(new Date(Date.now() + minutes * 60000).toISOString());
const when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC") : NONE);
const share = (part, whole) => (whole ? pct(part / whole) : NONE);
const money = (x) => (x === null || x === undefined ? NONE : Number(x).toFixed(2));

// One wave of the live-sale form: its time and its offers (limited, with their stock).
function waveBox(form, w) {
  const base = `waves.${w}.offers`;
  const offers = el("div", { class: "offers-box" });
  const box = el("fieldset", { class: "wave", "data-loc": `waves.${w}`, "data-wave": w },
    el("legend", {}, `Wave ${w + 1}`),
    field("Opens at", `waves.${w}.at`, input(nowLocal(60 + 15 * w), { type: "datetime-local", step: "1" }), "its offers are revealed on devices at this second"),
    offers,
    el("p", { class: "error", "data-error-for": `waves.${w}` }),
    el("button", { type: "button", "data-action": "add-wave-offer", onclick: () => {
      offers.append(offerBox(form, offers.querySelectorAll("fieldset.offer").length, { limited: true }, base)); } }, "Add offer to this wave"));
  offers.append(offerBox(form, 0, { limited: true, type: "coupon" }, base));
  return box;
}

// A wave's check names its offer in the message (`offers.0: ...` at `waves.1`): shown in
// that offer's box.
const inOffer = (errors) => errors.map((e) => {
  const m = /^waves\.\d+$/.test(e.loc) && e.msg.match(/(?:Value error, )?(offers\.\d+): (.*)$/);
  return m ? { loc: `${e.loc}.${m[1]}`, msg: m[2] } : e;
});

function saleBody(form) {
  const body = { name: value(form, "name"), cohorts: list(value(form, "cohorts")) };
  const ends = value(form, "ends_at");
  if (ends) body.ends_at = Number.isNaN(Date.parse(ends)) ? ends : new Date(ends).toISOString();
  body.waves = [...form.querySelectorAll("fieldset.wave")].map((box) => {
    const at = value(box, `${box.dataset.loc}.at`);
    return { at: Number.isNaN(Date.parse(at)) ? at : new Date(at).toISOString(),
      offers: [...box.querySelectorAll("fieldset.offer")].map(offerBody) };
  });
  return body;
}

async function showSaleForm() {
  const form = el("form", { id: "sale-form", novalidate: "" });
  const waves = el("div", { class: "waves-box" });
  form.append(
    el("p", { class: "error top", "data-error-for": "(root)", role: "alert" }),
    field("Name", "name", input("")),
    field("Cohorts", "cohorts", input("all"), "comma-separated: all, profile:tv, region:cn-east"),
    field("Ends", "ends_at", input("", { type: "datetime-local" }), "empty: open end; else after the last wave"),
    el("p", { class: "error", "data-error-for": "waves" }),
    waves,
    el("button", { type: "button", "data-action": "add-wave", onclick: () => {
      waves.append(waveBox(form, waves.querySelectorAll("fieldset.wave").length)); } }, "Add wave"),
    el("button", { type: "submit", "data-action": "save" }, "Create live sale"));
  waves.append(waveBox(form, 0));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const saved = await api("/v1/live-sales", { method: "POST", json: saleBody(form) });
      showErrors(form, []);
      notify(`${saved.campaign.name}: live sale created with ${saved.waves.length} wave(s); launch it from its page.`);
      location.hash = "#/campaign/" + saved.campaign.id;
    } catch (err) {
      showErrors(form, err.errors && err.errors.length ? inOffer(err.errors) : [{ loc: "(root)", msg: err.message }]);
      notify(`Not saved: ${err.message}`, true);
    }
  });
  $("#page-sale").replaceChildren(el("h2", { id: "sale-title" }, "New live sale"), form);
}

// Add or pull coupons of one wave offer; the API's errors go next to the amount.
function stockForm(campaignId, offerId, title) {
  const form = el("form", { class: "stock", "data-stock-for": offerId, novalidate: "" });
  const send = (sign) => async () => {
    const v = num(value(form, "delta"));
    const delta = typeof v === "number" ? sign * v : v;
    try {
      const got = await api(`/v1/live-sales/${campaignId}/stock`, { method: "POST", json: { offer_id: offerId, delta } });
      showErrors(form, []);
      notify(`${title}: ${got.stock} coupon(s) left of ${got.initial}.`);
      refresh();
    } catch (err) {
      showErrors(form, err.errors && err.errors.length ? err.errors : [{ loc: "(root)", msg: err.message }]);
      notify(`Stock not changed: ${err.message}`, true);
    }
  };
  form.addEventListener("submit", (e) => e.preventDefault());
  const amount = field("Coupons", "delta", input("", { inputmode: "numeric", size: 6 }));
  for (const node of amount.querySelectorAll("[id]")) node.id += "-" + offerId;  // one per offer row
  amount.querySelector("label").htmlFor = amount.querySelector("input").id;
  amount.querySelector("input").setAttribute("aria-describedby", amount.querySelector(".error").id);
  form.append(el("p", { class: "error top", "data-error-for": "(root)" }), amount,
    el("button", { type: "button", "data-action": "add-stock", onclick: send(1) }, "Add"),
    el("button", { type: "button", "data-action": "pull-stock", onclick: send(-1) }, "Pull"));
  return form;
}

function wavesBox(c, sale) {
  const title = Object.fromEntries(c.offers.map((o) => [o.id, o.title]));
  const open = c.state !== "ended";
  return el("div", { class: "card", "data-metric": "waves" }, el("h3", {}, "Live sale: waves"),
    el("table", {},
      el("caption", {}, "Per wave and offer: coupons in stock (added and pulled included), granted, left; when it sold out"),
      el("tr", {}, ...["wave", "opens (UTC)", "offer", "stock", "granted", "left", "sold out at", open ? "add or pull" : ""].map((t) => el("th", { scope: "col" }, t))),
      ...sale.waves.flatMap((w) => w.offers.map((o) => el("tr", { "data-wave": w.wave, "data-offer": o.offer_id },
        el("td", {}, w.wave), el("td", {}, when(w.at)), el("td", {}, title[o.offer_id] || o.offer_id),
        el("td", { "data-field": "initial" }, o.initial), el("td", { "data-field": "granted" }, o.taken),
        el("td", { "data-field": "left" }, o.left),
        el("td", { "data-field": "sold_out_at" }, o.sold_out ? when(o.sold_out_at) : "not sold out"),
        el("td", {}, open ? stockForm(c.id, o.offer_id, title[o.offer_id] || o.offer_id) : ""))))));
}

function groupsBox(c, report) {
  const title = Object.fromEntries(c.offers.map((o) => [o.id, o.title]));
  const box = el("div", { class: "card", "data-metric": "groups" }, el("h3", {}, "Group buys"));
  if (!report.offers.length) { box.append(el("p", { class: "note" }, "No group started yet.")); return box; }
  box.append(el("table", {},
    el("caption", {}, "Per offer: groups started, formed, expired, open; seats granted, released, held; conversion = formed of the groups decided"),
    el("tr", {}, ...["offer", "groups", "formed", "expired", "open", "seats granted", "seats released", "seats open", "conversion"].map((t) => el("th", { scope: "col" }, t))),
    ...report.offers.map((g) => el("tr", { "data-offer": g.offer_id },
      el("td", {}, title[g.offer_id] || g.offer_id), el("td", { "data-field": "groups" }, g.groups),
      el("td", { "data-field": "formed" }, g.formed), el("td", { "data-field": "expired" }, g.expired),
      el("td", { "data-field": "open" }, g.open), el("td", { "data-field": "seats_granted" }, g.seats_granted),
      el("td", { "data-field": "seats_released" }, g.seats_released), el("td", { "data-field": "seats_open" }, g.seats_open),
      el("td", { "data-field": "conversion" }, share(g.formed, g.formed + g.expired))))));
  return box;
}

function cutsBox(c, report) {
  const offer = Object.fromEntries(c.offers.map((o) => [o.id, o]));
  const box = el("div", { class: "card", "data-metric": "cuts" }, el("h3", {}, "Price cuts"));
  if (!report.offers.length) { box.append(el("p", { class: "note" }, "No cut started yet.")); return box; }
  box.append(el("table", {},
    el("caption", {}, "Per offer: cuts started, done, expired; helps taken and refused (why); prices reached"),
    el("tr", {}, ...["offer", "cuts", "done", "expired", "helps", "helps refused", "lowest price", "mean price", "price → floor"].map((t) => el("th", { scope: "col" }, t))),
    ...report.offers.map((x) => {
      const o = offer[x.offer_id] || {};
      const refused = Object.entries(x.helps_refused).map(([why, n]) => `${n} ${why.replace(/_/g, " ")}`).join(", ");
      return el("tr", { "data-offer": x.offer_id },
        el("td", {}, o.title || x.offer_id), el("td", { "data-field": "cuts" }, x.cuts),
        el("td", { "data-field": "done" }, x.done), el("td", { "data-field": "expired" }, x.expired),
        el("td", { "data-field": "helps" }, x.helps), el("td", { "data-field": "helps_refused" }, refused || "0"),
        el("td", { "data-field": "lowest_price" }, money(x.lowest_price)), el("td", { "data-field": "mean_price" }, money(x.mean_price)),
        el("td", {}, o.cut ? `${money(o.price)} → ${money(o.cut.floor)} in ${o.cut.helps} help(s)` : NONE));
    })));
  return box;
}

// The social boxes of a campaign's page: waves when it is a live sale, groups and cuts when
// it has such offers (each read from its own route).
async function socialBoxes(c) {
  const q = encodeURIComponent(c.id);
  const has = (type) => c.offers.some((o) => o.type === type);
  const [sale, groups, cuts] = await Promise.all([
    // a wave's offers are limited and open at its time: only then can it be a live sale
    c.offers.some((o) => o.limited && o.starts_at)
      ? api(`/v1/live-sales/${q}`).catch((err) => { if (err.status === 404) return null; throw err; }) : null,
    has("group_buy") ? api(`/v1/social/groups?campaign=${q}`) : null,
    has("price_cut") ? api(`/v1/social/cuts?campaign=${q}`) : null,
  ]);
  return [sale && wavesBox(c, sale), groups && groupsBox(c, groups), cuts && cutsBox(c, cuts)].filter(Boolean);
}

async function showMembers() {
  const { tiers, totals } = await api("/v1/members/tiers");
  $("#page-members").replaceChildren(el("h2", {}, "Members: tiers and points"),
    el("div", { class: "card", "data-metric": "tiers" },
      el("div", { class: "numbers" },
        metric("points issued", totals.issued, "points-issued"), metric("points spent", totals.spent, "points-spent"),
        metric("points held", totals.held, "points-held"), metric("ledger entries", totals.entries, "ledger-entries")),
      el("table", {},
        el("caption", {}, "Per tier (threshold: points earned to reach it); erased members' totals kept apart"),
        el("tr", {}, ...["tier", "threshold", "members", "points issued", "points spent"].map((t) => el("th", { scope: "col" }, t))),
        ...tiers.map((t) => el("tr", { "data-tier": t.tier },
          el("td", {}, t.name), el("td", {}, t.threshold ?? NONE), el("td", { "data-field": "members" }, t.members),
          el("td", { "data-field": "issued" }, t.points_issued), el("td", { "data-field": "spent" }, t.points_spent))))));
}
