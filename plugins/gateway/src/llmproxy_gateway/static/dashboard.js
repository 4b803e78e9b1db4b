"use strict";
// The llmproxy dashboard: polls /dashboard/data every second and redraws. No dependencies.

const PALETTE = ["#2f6fed", "#e8833a", "#3ca86b", "#c94b7d", "#7b5cd6", "#1fa5b8", "#c9a227",
  "#8d6e63", "#5c6bc0", "#ef5350"];
// "model" is the deployment that answered; "alias" rolls an alias's deployments up.
const DIMS = ["model", "alias", "user", "key"];
const SVG = "http://www.w3.org/2000/svg";
const state = { window: 3600, version: 0, keys: {} };
let timer = null;

function fmtInt(n) { return Math.round(n).toLocaleString("en-US"); }
function fmtUsd(n) { return "$" + (n >= 100 ? n.toFixed(2) : n.toFixed(6)); }
function fmtTime(ts) {
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString("en-GB", { hour12: false });
}
function fmtWhen(ts) {
  if (!ts) return "–";
  const d = new Date(ts * 1000);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}
// Long ids (sessions may be 200 characters) end in an ellipsis; the full id is in the title.
function shorten(text, max) { return text.length > max ? text.slice(0, max - 1) + "…" : text; }
function color(group, groups) {
  const i = groups.indexOf(group);
  return i >= 0 && i < PALETTE.length ? PALETTE[i] : "#9aa5ba";
}
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
function label(dim, group) {
  if (dim !== "key" || group === "-") return group === "-" ? "(none)" : group;
  const k = state.keys[group];
  return k ? group + " (" + k.user + ")" : group;
}

// A stacked bar chart of one metric of a dimension's series.
function chart(d, dim, metric, groups, money) {
  const W = 560, H = 170, L = 52, R = 8, T = 8, B = 22;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-metric": metric });
  const n = Math.max(1, Math.ceil((d.now - d.since) / d.bucket));
  const stacks = new Map();
  let max = 0;
  for (const p of d.by[dim].series) {
    const i = Math.floor((p.start - d.since) / d.bucket);
    if (i < 0 || i >= n) continue;
    const s = stacks.get(i) || [];
    s.push(p);
    stacks.set(i, s);
  }
  for (const s of stacks.values()) {
    max = Math.max(max, s.reduce((a, p) => a + p[metric], 0));
  }
  if (max <= 0) max = money ? 0.000001 : 1;
  const plotW = W - L - R, plotH = H - T - B, bw = plotW / n;
  for (const f of [0, 0.5, 1]) {
    const y = T + plotH * (1 - f);
    svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
    const t = svgEl("text", { x: L - 4, y: y + 3, "text-anchor": "end" });
    t.textContent = money ? fmtUsd(max * f) : fmtInt(max * f);
    svg.appendChild(t);
  }
  for (const [i, s] of stacks) {
    let y = T + plotH;
    s.sort((a, b) => groups.indexOf(a.group) - groups.indexOf(b.group));
    for (const p of s) {
      const h = plotH * p[metric] / max;
      if (h <= 0) continue;
      y -= h;
      const r = svgEl("rect", {
        x: L + i * bw + 0.5, y: y, width: Math.max(bw - 1, 1), height: h,
        fill: color(p.group, groups),
      });
      const title = svgEl("title", {});
      title.textContent = `${label(dim, p.group)} ${fmtTime(p.start)}: ` +
        (money ? fmtUsd(p[metric]) : fmtInt(p[metric]));
      r.appendChild(title);
      svg.appendChild(r);
    }
  }
  for (let k = 0; k <= 4; k++) {
    const ts = d.since + (n * d.bucket) * k / 4;
    const t = svgEl("text", { x: L + plotW * k / 4, y: H - 6, "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle" });
    t.textContent = fmtTime(ts).slice(0, 5);
    svg.appendChild(t);
  }
  return svg;
}

function renderDim(d, dim) {
  const section = document.getElementById("by-" + dim);
  const totals = d.by[dim].totals;
  const groups = totals.map((t) => t.group);
  const frag = document.createDocumentFragment();
  frag.appendChild(el("h2", {}, "By " + dim));
  const legend = el("div", { class: "legend" });
  for (const g of groups.slice(0, PALETTE.length)) {
    const s = el("span", { style: "--c:" + color(g, groups) }, label(dim, g));
    legend.appendChild(s);
  }
  frag.appendChild(legend);
  const charts = el("div", { class: "charts" });
  const c1 = el("div", { class: "chart" });
  c1.appendChild(el("h3", {}, "Tokens"));
  c1.appendChild(chart(d, dim, "total_tokens", groups, false));
  const c2 = el("div", { class: "chart" });
  c2.appendChild(el("h3", {}, "Spend (USD)"));
  c2.appendChild(chart(d, dim, "cost", groups, true));
  charts.appendChild(c1);
  charts.appendChild(c2);
  frag.appendChild(charts);
  const table = el("table", { id: "totals-" + dim });
  const head = el("tr");
  for (const [h, num] of [[dim, false], ["calls", true], ["errors", true], ["input tokens", true],
    ["output tokens", true], ["total tokens", true], ["spend", true]]) {
    head.appendChild(el("th", num ? { class: "num" } : {}, h));
  }
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  for (const t of totals) {
    const tr = el("tr", { "data-group": t.group });
    tr.appendChild(el("td", { class: "text group" }, label(dim, t.group)));
    tr.appendChild(el("td", { class: "num calls", "data-value": t.calls }, fmtInt(t.calls)));
    tr.appendChild(el("td", { class: "num errors", "data-value": t.errors }, fmtInt(t.errors)));
    tr.appendChild(el("td", { class: "num input", "data-value": t.input_tokens }, fmtInt(t.input_tokens)));
    tr.appendChild(el("td", { class: "num output", "data-value": t.output_tokens }, fmtInt(t.output_tokens)));
    tr.appendChild(el("td", { class: "num tokens", "data-value": t.total_tokens }, fmtInt(t.total_tokens)));
    tr.appendChild(el("td", { class: "num cost", "data-value": t.cost }, fmtUsd(t.cost)));
    body.appendChild(tr);
  }
  if (!totals.length) {
    body.appendChild(el("tr")).appendChild(el("td", { colspan: 7, class: "empty" }, "No calls in this window."));
  }
  frag.appendChild(table);
  section.replaceChildren(frag);
}

function fmtAmount(v, unit) {
  return unit === "usd" ? fmtUsd(v) : fmtInt(v) + " " + unit;
}

function renderBudgets(d) {
  const body = document.querySelector("#budgets tbody");
  const rows = [];
  for (const b of d.budgets) {
    const tr = el("tr", { "data-budget": b.id });
    tr.appendChild(el("td", { class: "text policy" }, b.policy));
    tr.appendChild(el("td", { class: "text scope" }, b.scope));
    tr.appendChild(el("td", { class: "num used", "data-value": b.used }, fmtAmount(b.used, b.unit)));
    tr.appendChild(el("td", { class: "num limit", "data-value": b.limit }, fmtAmount(b.limit, b.unit)));
    const share = b.limit > 0 ? Math.min(1, (b.used + b.reserved) / b.limit) : 1;
    const bar = el("span", { class: "bar", title: Math.round(share * 100) + "%" });
    bar.appendChild(el("i", { class: share >= 1 ? "full" : "", style: "width:" + (share * 100).toFixed(1) + "%" }));
    tr.appendChild(el("td")).appendChild(bar);
    tr.appendChild(el("td", { class: "num reserved", "data-value": b.reserved }, fmtAmount(b.reserved, b.unit)));
    tr.appendChild(el("td", { class: "resets", "data-value": b.resets_at }, b.resets_at ? fmtWhen(b.resets_at) : "never"));
    rows.push(tr);
  }
  if (!rows.length) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: 7, class: "empty" }, "No budgets configured."));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  document.getElementById("budget-error").textContent = d.budget_error ? "Ledger: " + d.budget_error : "";
}

function renderLimits(d) {
  const body = document.querySelector("#limits tbody");
  const rows = d.limits.map((h) => {
    const tr = el("tr", { "data-kind": h.kind, "data-policy": h.policy });
    tr.appendChild(el("td", { class: "kind" }, h.kind));
    tr.appendChild(el("td", { class: "text policy" }, h.policy));
    tr.appendChild(el("td", { class: "num hits", "data-value": h.hits }, fmtInt(h.hits)));
    tr.appendChild(el("td", { class: "last" }, fmtWhen(h.last)));
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: 4, class: "empty" }, "No calls refused by a limit."));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function renderPrices(d) {
  const body = document.querySelector("#prices tbody");
  const rows = (d.prices || []).map((r) => {
    const p = r.price;
    const tr = el("tr", { "data-model": r.model, class: p && p.stale ? "stale" : "" });
    tr.appendChild(el("td", { class: "text model" }, r.model));
    if (!p) {
      tr.appendChild(el("td", { colspan: 6, class: "text bad" }, "no price"));
      return tr;
    }
    for (const k of ["input", "output", "cache_read", "cache_write"]) {
      tr.appendChild(el("td", { class: "num " + k }, "$" + p[k] + (p.tiers.length ? "+" : "")));
    }
    tr.appendChild(el("td", { class: "text origin" }, p.origin));
    const age = p.as_of ? p.as_of + (p.age_days === null ? "" : " (" + p.age_days + " d)") : "unknown";
    const asOf = el("td", { class: p.stale ? "text bad as-of" : "text as-of" }, age + (p.stale ? " stale" : ""));
    // As llmproxy prices says: a price by the hour (DeepSeek's off-peak), the next change.
    if (p.varies) asOf.appendChild(el("span", { class: "note varies" }, "varies by hour"));
    if (p.changes && p.changes.length) {
      const next = p.changes[0];
      const when = new Date(next.at * 1000).toISOString().slice(0, 16).replace("T", " ");
      asOf.appendChild(el("span", {
        class: "note changes",
        title: "then input $" + next.input + ", output $" + next.output + " per 1M tokens",
      }, "changes " + when + " UTC"));
    }
    tr.appendChild(asOf);
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: 7, class: "empty" }, "No calls in this window."));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function renderRecent(d) {
  const body = document.querySelector("#recent tbody");
  const rows = d.recent.map((r) => {
    const tr = el("tr", { class: "call" });
    tr.appendChild(el("td", {}, fmtTime(r.ts)));
    tr.appendChild(el("td", { class: "text model" }, r.alias ? `${r.model} (${r.alias})` : r.model));
    tr.appendChild(el("td", { class: "text user" }, r.user || "–"));
    tr.appendChild(el("td", { class: "key" }, r.key || "–"));
    const s = tr.appendChild(el("td", { class: "text session" }));
    if (r.session_url) {
      s.appendChild(el("a", { href: r.session_url, title: r.session_id }, shorten(r.session_id, 40)));
    }
    else s.textContent = "–";
    tr.appendChild(el("td", { class: "num input" }, fmtInt(r.input_tokens)));
    tr.appendChild(el("td", { class: "num output" }, fmtInt(r.output_tokens)));
    tr.appendChild(el("td", { class: "num cost" }, r.cost === null ? "–" : fmtUsd(r.cost)));
    tr.appendChild(el("td", { class: "num latency" }, Math.round(r.latency * 1000) + " ms"));
    const outcome = r.outcome + (r.error ? " (" + r.error + ")" : "") + (r.streamed ? ", streamed" : "") + (r.operation === "embed" ? ", embed" : "");
    tr.appendChild(el("td", { class: r.outcome === "error" ? "text bad outcome" : "text outcome" }, outcome));
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: 10, class: "empty" }, "No calls yet."));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function render(d) {
  state.keys = d.keys || {};
  const s = d.summary;
  const set = (id, v, text) => {
    const e = document.getElementById(id);
    e.textContent = text;
    e.dataset.value = v;
  };
  set("summary-calls", s.calls, fmtInt(s.calls));
  set("summary-errors", s.errors, fmtInt(s.errors));
  set("summary-input", s.input_tokens, fmtInt(s.input_tokens));
  set("summary-output", s.output_tokens, fmtInt(s.output_tokens));
  set("summary-tokens", s.total_tokens, fmtInt(s.total_tokens));
  set("summary-cost", s.cost, fmtUsd(s.cost));
  const hits = s.cache_hits || 0;
  const rate = s.calls ? (100 * hits) / s.calls : 0;
  set("summary-cache", hits, `${fmtInt(hits)} (${rate.toFixed(1)}%)`);
  for (const dim of DIMS) renderDim(d, dim);
  renderBudgets(d);
  renderLimits(d);
  renderPrices(d);
  renderRecent(d);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const r = await fetch("/dashboard/data?window=" + state.window, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { location.reload(); return; }
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json();
    render(d);
    state.version += 1;
    document.body.dataset.version = String(state.version);
    status.className = "live";
    status.textContent = "live, updated " + fmtTime(d.now);
  } catch (e) {
    status.className = "offline";
    status.textContent = "offline: " + e.message;
  } finally {
    clearTimeout(timer);
    timer = setTimeout(refresh, 1000);
  }
}

for (const b of document.querySelectorAll("#windows button")) {
  b.addEventListener("click", () => {
    state.window = Number(b.dataset.window);
    for (const o of document.querySelectorAll("#windows button")) o.classList.toggle("on", o === b);
    clearTimeout(timer);
    refresh();
  });
}
refresh();
