// The fleet page: polls /ui/state and redraws. Data only ever goes into textContent/attributes.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function ago(now, t) {
  if (t === null || t === undefined) return "never";
  const s = Math.max(0, now - t);
  return s < 120 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(0)} min ago`;
}

function when(t) {
  return t ? new Date(t * 1000).toISOString().replace(".000", "") : "";
}

// completion CDF: x = seconds to loaded, y = share of the rollout's hosts
function cdf(seconds, total) {
  const w = 360, h = 140, pad = 30;
  const chart = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: "cdf", role: "img" });
  const max = Math.max(1, ...seconds);
  const x = (s) => pad + (s / max) * (w - 2 * pad);
  const y = (f) => h - pad + -f * (h - 2 * pad);
  chart.append(svg("line", { x1: pad, y1: y(0), x2: w - pad, y2: y(0), class: "axis" }));
  chart.append(svg("line", { x1: pad, y1: y(0), x2: pad, y2: y(1), class: "axis" }));
  let d = `M ${x(0)} ${y(0)}`;
  seconds.forEach((s, i) => { d += ` H ${x(s)} V ${y((i + 1) / Math.max(1, total))}`; });
  chart.append(svg("path", { d, class: "curve" }));
  const label = (text, ax, ay, anchor) => {
    const t = svg("text", { x: ax, y: ay, "text-anchor": anchor, class: "label" });
    t.textContent = text;
    chart.append(t);
  };
  label("0", pad, h - pad + 14, "middle");
  label(`${max.toFixed(0)} s`, w - pad, h - pad + 14, "middle");
  label("100%", pad - 4, y(1) + 4, "end");
  label("time to loaded", w / 2, h - 4, "middle");
  return chart;
}

function hostRow(h) {
  const pct = h.total ? Math.floor((100 * h.done) / h.total) : 0;
  const bar = el("div", { class: "bar" }, el("div", { class: "fill", style: `width: ${pct}%` }));
  const stages = h.stages.map((s) => `${s.name} ${s.seconds.toFixed(s.seconds < 10 ? 1 : 0)}s`).join(" → ");
  const notes = [];
  if (h.error) notes.push(h.error);
  if (h.stale) notes.push("stale");
  if (!h.current && h.state === "loaded") notes.push("older image");
  const cls = ["host", `state-${h.state}`];
  if (h.stale) cls.push("stale");
  return el("tr", { class: cls.join(" "), "data-host": h.host },
    el("td", {}, h.host), el("td", { class: "state" }, h.state), el("td", {}, bar, ` ${pct}%`),
    el("td", {}, bytes(h.from_peers)), el("td", {}, bytes(h.from_builder)), el("td", {}, stages),
    el("td", { class: "mono" }, (h.image_id || "").slice(7, 19)), el("td", { class: "note" }, notes.join("; ")));
}

function rolloutCard(r) {
  const card = el("article", { class: "rollout", "data-ref": r.ref },
    el("h2", {}, r.ref, " ", el("span", { class: "done" }, `${r.loaded}/${r.total} hosts`)),
    el("p", { class: "summary" }, r.summary));
  card.append(cdf(r.seconds, r.total));
  const table = el("table", { class: "pulls" },
    el("thead", {}, el("tr", {}, ...["host", "state", "progress", "from peers", "from builder", "stages",
      "image", "note"].map((t) => el("th", {}, t)))));
  const body = el("tbody");
  for (const h of r.hosts) body.append(hostRow(h));
  const reported = new Set(r.hosts.map((h) => h.host));
  for (const name of r.missing) {
    if (!reported.has(name)) {
      body.append(el("tr", { class: "host state-none", "data-host": name }, el("td", {}, name),
        el("td", { class: "state" }, "-"), el("td", {}), el("td", {}), el("td", {}), el("td", {}), el("td", {}),
        el("td", { class: "note" }, "no report")));
    }
  }
  table.append(body);
  card.append(table);
  return card;
}

function render(state) {
  document.getElementById("me").textContent = `${state.me.name} (${state.me.role})`;
  document.getElementById("updated").textContent = `updated ${new Date(state.now * 1000).toLocaleTimeString()}`;
  const rollouts = document.getElementById("rollouts");
  rollouts.replaceChildren(...state.rollouts.map(rolloutCard));
  if (!state.rollouts.length) rollouts.append(el("p", { class: "muted" }, "no rollouts yet"));
  const section = document.getElementById("hosts-section");
  section.hidden = state.me.role !== "admin";
  const body = document.querySelector("#hosts tbody");
  body.replaceChildren(...state.hosts.map((h) => el("tr", { class: h.stale ? "stale" : "", "data-host": h.name },
    el("td", {}, h.name), el("td", {}, h.role), el("td", {}, h.address), el("td", {}, ago(state.now, h.last_seen)
      + (h.stale && h.last_seen ? " (stale)" : "")), el("td", {}, h.version), el("td", {}, when(h.cert_not_after)),
    el("td", {}, bytes(h.cache_bytes)), el("td", {}, h.images_loaded + (h.failing ? ` (${h.failing} failed)` : "")))));
}

async function poll() {
  try {
    const resp = await fetch("/ui/state", { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) { window.location.reload(); return; }
    if (resp.ok) render(await resp.json());
  } catch (e) {
    document.getElementById("updated").textContent = "tracker unreachable, retrying";
  }
  setTimeout(poll, POLL_MS);
}

poll();
