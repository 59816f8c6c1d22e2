// The gatehouse dashboard: reads the admin API with the admin key and draws what it says.
// Everything is built as DOM nodes with text content, never as HTML from data, so nothing a
// resource or a client wrote can run here.
"use strict";

const KEY_SLOT = "gatehouse-admin-key";
const POLL_MS = 2000;
const POINTS = 60; // two minutes of samples per chart

const state = {
  key: sessionStorage.getItem(KEY_SLOT) || "",
  status: null,
  samples: [], // [{at, routes: {id: {requests, errors, buckets: [[le, count]], }}}]
  timer: null,
};

// ---------- DOM helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function table(headers, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "none"))));
}

function show(...nodes) {
  const view = document.getElementById("view");
  view.replaceChildren(...nodes);
}

// Draws a view unless a newer refresh has started since it was asked for: a slow answer
// never paints an old view over the one the operator moved to (or over what is typed in
// the edit form).
function showIf(current, ...nodes) {
  if (current && !current()) return;
  show(...nodes);
}

// ---------- the admin API ----------

class Unauthorized extends Error {}

// A gateway that stops answering must show as such, not as a page that waits forever.
const ANSWER_WITHIN_MS = 5000;

// The page is served at `ROOT + "ui/"`, and everything it reads is under the same root:
// behind a proxy that serves the admin listener under a path prefix, it reads through it.
const ROOT = new URL("../", window.location.href);

async function fetchWithin(path, options = {}) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), ANSWER_WITHIN_MS);
  try {
    const url = new URL("." + path, ROOT);
    return await fetch(url, Object.assign({}, options, { cache: "no-store", signal: abort.signal }));
  } catch (e) {
    throw new Error(abort.signal.aborted ? `no answer within ${ANSWER_WITHIN_MS / 1000} s` : e.message);
  } finally {
    clearTimeout(timer);
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers.Authorization = "Bearer " + state.key;
  const resp = await fetchWithin(path, Object.assign({}, options, { headers }));
  if (resp.status === 401) throw new Unauthorized("the admin key was refused");
  return resp;
}

async function apiJson(path) {
  const resp = await api(path);
  if (!resp.ok) throw new Error(path + " answered " + resp.status);
  return resp.json();
}

// ---------- metrics: per-route rate, error rate and latency ----------

function parseMetrics(text) {
  const routes = {};
  const route = (id) => (routes[id] ||= { requests: 0, errors: 0, buckets: new Map() });
  for (const line of text.split("\n")) {
    if (!line.startsWith("gatehouse_request")) continue;
    const m = line.match(/^(\w+)\{([^}]*)\} ([0-9.eE+-]+|NaN|\+Inf)$/);
    if (!m) continue;
    const labels = {};
    for (const part of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[part[1]] = part[2];
    if (labels.route === undefined) continue;
    const value = Number(m[3]);
    if (m[1] === "gatehouse_requests_total") {
      const r = route(labels.route);
      r.requests += value;
      if (Number(labels.status) >= 500) r.errors += value;
    } else if (m[1] === "gatehouse_request_duration_seconds_bucket") {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      route(labels.route).buckets.set(le, value);
    }
  }
  return routes;
}

// The quantile q of the requests between two samples, from the histogram's buckets.
function quantile(before, after, q) {
  const les = [...after.buckets.keys()].sort((a, b) => a - b);
  const counts = les.map((le) => (after.buckets.get(le) || 0) - ((before && before.buckets.get(le)) || 0));
  const total = counts[counts.length - 1] || 0;
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < les.length; i++) if (counts[i] >= rank) return les[i];
  return null;
}

// Per route, the series of [requests/s, error share, p99 seconds] between samples.
function series(routeId) {
  const out = [];
  for (let i = 1; i < state.samples.length; i++) {
    const a = state.samples[i - 1], b = state.samples[i];
    const rb = b.routes[routeId];
    if (!rb) continue;
    // A count that went down was started again (the route was removed and came back, or
    // the gateway restarted): as Prometheus reads a reset, it counts from zero.
    const ra = a.routes[routeId] && a.routes[routeId].requests <= rb.requests ? a.routes[routeId] : null;
    const seconds = (b.at - a.at) / 1000;
    const requests = rb.requests - (ra ? ra.requests : 0);
    const errors = rb.errors - (ra ? ra.errors : 0);
    out.push({
      rate: requests / seconds,
      errors: requests > 0 ? errors / requests : 0,
      p99: quantile(ra, rb, 0.99),
    });
  }
  return out;
}

function spark(values, label) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 28");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  // The samples so far fill the width; a lone sample is drawn as a flat line.
  const finite = values.map((v) => (Number.isFinite(v) ? v : 0));
  if (finite.length === 1) finite.push(finite[0]);
  const max = Math.max(...finite, 1e-9);
  const points = finite.map((v, i) => `${(i * 120) / Math.max(finite.length - 1, 1)},${27 - (v / max) * 26}`);
  const base = document.createElementNS("http://www.w3.org/2000/svg", "line");
  for (const [name, value] of [["x1", 0], ["y1", 27.5], ["x2", 120], ["y2", 27.5], ["class", "base"]]) base.setAttribute(name, value);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(base, line);
  return svg;
}

async function sample() {
  const resp = await fetchWithin("/metrics");
  if (!resp.ok) return;
  state.samples.push({ at: Date.now(), routes: parseMetrics(await resp.text()) });
  if (state.samples.length > POINTS + 1) state.samples.shift();
}

// ---------- views ----------

function sourceLine(status) {
  const s = status.source || {};
  const parts = [`${s.kind} · revision ${status.revision}`];
  if (!s.connected) parts.push("source unreachable");
  if (s.from_cache) parts.push("from the last-known-good cache");
  return parts.join(" · ");
}

function outageBanner(status, failure) {
  const banner = document.getElementById("outage");
  const s = (status && status.source) || {};
  let text = "";
  if (failure) text = "The gateway does not answer (" + failure + "): what is shown is the last it said.";
  else if (s.connected === false) text = `The configuration source (${s.kind}) cannot be reached${s.error ? ": " + s.error : ""}. The snapshot in force (revision ${status.revision}) keeps serving.`;
  else if (s.error) text = "The configuration source is not trusted: " + s.error;
  banner.textContent = text;
  banner.hidden = !text;
}

const views = {
  async overview(current) {
    const status = state.status;
    const s = status.source || {};
    const cards = h("div", { class: "grid" },
      h("div", { class: "card" }, h("div", { class: "muted" }, "Source"), h("div", {}, `${s.kind} `, s.connected ? h("span", { class: "ok" }, "connected") : h("span", { class: "bad" }, "not connected")), s.from_cache ? h("div", { class: "warn" }, "serving the last-known-good cache") : null, s.error ? h("div", { class: "error" }, s.error) : null),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Revision in force"), h("div", { id: "revision" }, String(status.revision)), h("div", { class: "muted" }, "loaded " + status.loaded_at)),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Resources"), h("div", {}, `${status.routes} routes · ${status.upstreams} upstreams · ${status.auth} auth policies · ${status.global_rules} global rules`)),
      status.redis ? h("div", { class: "card" }, h("div", { class: "muted" }, "Redis (shared limits)"), status.redis.connected ? h("span", { class: "ok" }, "connected") : h("span", { class: "bad" }, "not connected"), status.redis.error ? h("div", { class: "error" }, status.redis.error) : null) : null);
    const nodes = [h("h1", {}, "Overview"), cards];
    if (status.fleet) {
      nodes.push(h("h2", {}, "Instances"));
      if (status.fleet.error) nodes.push(h("p", { class: "error" }, status.fleet.error));
      else nodes.push(table(["id", "address", "version", "revision", "source", "started", ""],
        (status.fleet.instances || []).map((i) => h("tr", {},
          h("td", {}, i.id), h("td", {}, i.addr), h("td", {}, i.version), h("td", {}, String(i.revision)),
          h("td", {}, i.source_connected ? "connected" : "not connected"), h("td", {}, i.started_at),
          h("td", {}, i.lagging ? h("span", { class: "warn" }, "LAGGING") : "")))));
    }
    showIf(current, ...nodes);
  },

  async routes(current) {
    const routes = await apiJson("/admin/routes");
    const rows = routes.map((r) => {
      const m = r.match || {};
      const targets = r.upstream ? [r.upstream] : (r.weights || []).map((w) => `${w.upstream} (${w.weight})`);
      const data = series(r.id);
      const last = data[data.length - 1];
      const fmt = (v, unit, digits) => (v === null || v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(digits) + unit);
      return h("tr", { "data-route": r.id },
        h("td", {}, h("code", {}, r.id)),
        h("td", {}, (m.methods || []).join(" ") + " ", (m.hosts || []).join(" ") + " ", h("code", {}, (m.paths || []).join(" "))),
        h("td", {}, r.direct_response ? `answers ${r.direct_response.status}` : targets.join(", ")),
        h("td", {}, [r.auth ? "auth " + r.auth : null, r.rate_limit ? "rate_limit" : null, ...(r.plugins || []).map((p) => p.name)].filter(Boolean).join(", ")),
        h("td", {}, spark(data.map((d) => d.rate), "requests per second"), h("span", { class: "figure" }, fmt(last && last.rate, "/s", 1))),
        h("td", {}, spark(data.map((d) => d.errors * 100), "error share"), h("span", { class: "figure" }, fmt(last && last.errors * 100, "%", 1))),
        h("td", {}, spark(data.map((d) => d.p99), "P99 latency"), h("span", { class: "figure" }, fmt(last && last.p99 !== null ? last.p99 * 1000 : null, " ms", 0))));
    });
    showIf(current, h("h1", {}, "Routes"), table(["id", "match", "upstream", "plugins", "requests", "5xx", "P99"], rows),
      h("p", { class: "muted" }, "Rates from the gateway's own metrics, sampled every 2 s while this page is open; P99 is a histogram bucket's upper bound."));
  },

  async upstreams(current) {
    const [specs, live] = await Promise.all([apiJson("/admin/upstreams"), apiJson("/admin/live")]);
    const byId = new Map(live.map((u) => [u.id, u]));
    const cards = specs.map((u) => {
      const l = byId.get(u.id) || { nodes: [] };
      return h("div", { class: "card", "data-upstream": u.id },
        h("h2", {}, u.id, " ", h("span", { class: "muted" }, u.scheme || "http", u.discovery ? " · discovered" : "")),
        h("div", {}, "breaker: ", l.breaker ? h("span", { class: l.breaker === "closed" ? "ok" : "bad" }, l.breaker) : h("span", { class: "muted" }, "none"),
          l.concurrency ? ` · concurrency ${l.concurrency.in_flight} / ${l.concurrency.limit}` : ""),
        table(["node", "health", "in flight", "weight", "lane"], l.nodes.map((n) => h("tr", {},
          h("td", {}, h("code", {}, n.label)),
          h("td", {}, h("span", { class: "dot " + (n.healthy ? "ok" : "bad") }), n.healthy ? "healthy" : "ejected"),
          h("td", {}, String(n.in_flight)), h("td", {}, String(n.weight)), h("td", {}, n.lane || "")))));
    });
    showIf(current, h("h1", {}, "Upstreams"), ...cards);
  },

  async auth(current) {
    const policies = await apiJson("/admin/auth");
    showIf(current, h("h1", {}, "Auth policies"), h("p", { class: "muted" }, "Secrets are never shown."),
      ...policies.map((p) => h("div", { class: "card" }, h("h2", {}, p.id), h("pre", {}, toYaml(p)))));
  },

  async rejected(current) {
    const status = state.status;
    showIf(current, h("h1", {}, "Rejected"), table(["object", "error"], (status.rejected || []).map((r) =>
      h("tr", {}, h("td", {}, h("code", {}, r.key)), h("td", { class: "error" }, r.error)))));
  },

  async edit() {
    // Not auth policies: their secrets never reach the browser, so a policy loaded here
    // could only be written back without them. They are edited with `gatehouse apply`.
    const kinds = { routes: "Route", upstreams: "Upstream", global_rules: "GlobalRule" };
    const kind = h("select", { id: "edit-kind" }, Object.keys(kinds).map((k) => h("option", { value: k }, kinds[k])));
    const id = h("input", { id: "edit-id", placeholder: "id", required: true });
    const text = h("textarea", { id: "edit-yaml", spellcheck: "false" });
    const result = h("div", { id: "edit-result", role: "status" });
    // The version loaded, sent back with the write: an object changed by someone else since
    // is not overwritten (the API answers 412).
    let loaded = null;
    const load = async () => {
      result.replaceChildren();
      loaded = null;
      if (!id.value) { result.append(h("p", { class: "error" }, "Give the id to load.")); return; }
      // What is loaded, taken before the answer: the fields may change while it comes.
      const target = { kind: kind.value, id: id.value };
      const path = `/admin/${target.kind}/${encodeURIComponent(target.id)}`;
      let stored, resp;
      try {
        // The text etcd holds, as written (comments kept), even a version that was
        // rejected; the object in force, drawn as YAML, only when etcd holds none.
        stored = await api(path + "/stored");
        if (!stored.ok) resp = await api(path);
      } catch (e) {
        if (e instanceof Unauthorized) return signIn(e.message);
        result.append(h("p", { class: "error" }, "Could not load: " + e.message));
        return;
      }
      if (stored.ok) {
        text.value = await stored.text();
        loaded = Object.assign(target, { etag: stored.headers.get("ETag") });
        const rejection = (state.status.rejected || []).find((r) => r.key.endsWith(`/${target.kind}/${target.id}`));
        if (rejection) {
          result.append(h("p", { class: "error", id: "edit-rejected" }, "etcd holds this version, which was rejected (" + rejection.error + "); the version before it stays in force. Fix it and write."));
        }
        return;
      }
      if (resp.status === 404) { text.value = ""; result.append(h("p", { class: "muted" }, "Not in force: write it to create it.")); return; }
      const object = await resp.json();
      delete object.kind; delete object.id;
      text.value = toYaml(object);
      loaded = Object.assign(target, { etag: resp.headers.get("ETag") });
      result.append(h("p", { class: "muted" }, "Not in etcd: shown as in force."));
    };
    const write = async (event) => {
      event.preventDefault();
      result.replaceChildren(h("p", { class: "muted" }, "Validating and writing…"));
      const target = { kind: kind.value, id: id.value };
      let resp;
      try {
        const headers = { "Content-Type": "application/yaml" };
        const same = loaded && loaded.kind === target.kind && loaded.id === target.id && loaded.etag;
        // The version loaded must be the one replaced; with none loaded, only a new object
        // is written (one someone created meanwhile is not overwritten).
        if (same) headers["If-Match"] = loaded.etag; else headers["If-None-Match"] = "*";
        resp = await api(`/admin/${target.kind}/${encodeURIComponent(target.id)}`, { method: "PUT", body: text.value, headers });
      } catch (e) {
        if (e instanceof Unauthorized) return signIn(e.message);
        result.replaceChildren(h("p", { class: "error" }, "No answer (" + e.message + "): the write may or may not have been applied; load the resource to see."));
        return;
      }
      const body = await resp.json().catch(() => ({}));
      if (resp.ok) {
        // The object written is now the version this page holds.
        loaded = Object.assign(target, { etag: `"${body.revision}"` });
        result.replaceChildren(h("p", { class: "ok", id: "edit-written" }, `Written at revision ${body.revision}` + (body.in_force ? ", in force." : "; not in force yet.")));
      } else if (resp.status === 412 && body.error === "not_in_etcd") {
        // Deleted since it was loaded, or kept in force only because a route uses it: a
        // second, deliberate write stores it.
        loaded = null;
        result.replaceChildren(h("p", { class: "error", id: "edit-changed" }, "Nothing was written: the resource is not in etcd (deleted since you loaded it, or kept in force only because a route uses it). Write again to store this text."));
      } else if (resp.status === 412 && body.error === "already_exists") {
        result.replaceChildren(h("p", { class: "error", id: "edit-changed" }, "Nothing was written: the resource is in etcd already (created meanwhile, or not loaded here). Copy your edit, load it and reapply."));
      } else if (resp.status === 412) {
        result.replaceChildren(h("p", { class: "error", id: "edit-changed" }, "Nothing was written: the resource changed since you loaded it. Copy your edit, load it again and reapply."));
      } else {
        const errors = body.errors || [];
        result.replaceChildren(h("p", { class: "error" }, errors.length ? "Refused; nothing was written:" : (body.message || `refused (${resp.status})`)),
          h("ul", { class: "errors", id: "edit-errors" }, errors.map((e) => h("li", {}, e))));
      }
    };
    show(h("h1", {}, "Edit a resource"),
      h("p", { class: "muted" }, "The resource is validated with everything in force before it is written to etcd; nothing is written when it is refused."),
      h("form", { onsubmit: write }, h("p", {}, kind, " ", id, " ", h("button", { type: "button", onclick: load, id: "edit-load" }, "Load")), text, h("p", {}, h("button", { type: "submit", id: "edit-write" }, "Validate and write"))),
      result);
  },
};

// A JSON value as YAML (block style, strings quoted when YAML would read them otherwise).
function toYaml(value, indent = "") {
  // A string is written plain only when YAML reads it back as that same string; else
  // double-quoted, with every character YAML does not take as it is escaped.
  const scalar = (v) => {
    if (v === null) return "null";
    if (typeof v === "number" || typeof v === "boolean") return String(v);
    const s = String(v);
    const plain = /^[A-Za-z_/][\w./*{}-]*(:[\w./*{}-]+)*$/.test(s) && !/^(true|false|null|yes|no|on|off|y|n|~)$/i.test(s);
    return plain ? s : JSON.stringify(s).replace(/[\u007f-\u009f\u2028\u2029]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  };
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return value.map((v) => {
      if (v !== null && typeof v === "object" && Object.keys(v).length) {
        const inner = toYaml(v, indent + "  ");
        return `${indent}- ${inner.slice(indent.length + 2)}`;
      }
      return `${indent}- ${typeof v === "object" && v !== null ? (Array.isArray(v) ? "[]" : "{}") : scalar(v)}`;
    }).join("\n");
  }
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (!keys.length) return "{}";
    return keys.map((k) => {
      const v = value[k];
      if (v !== null && typeof v === "object" && (Array.isArray(v) ? v.length : Object.keys(v).length)) {
        return `${indent}${scalar(k)}:\n${toYaml(v, indent + "  ")}`;
      }
      return `${indent}${scalar(k)}: ${v !== null && typeof v === "object" ? (Array.isArray(v) ? "[]" : "{}") : scalar(v)}`;
    }).join("\n");
  }
  return indent + scalar(value);
}

// ---------- navigation ----------

function currentView() {
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1];
  return views[name] ? name : "overview";
}

let refreshes = 0;

async function refresh() {
  // Only the newest refresh draws: a slow answer never paints an old view over a new one.
  const mine = ++refreshes;
  const current = () => mine === refreshes;
  let failure = null;
  try {
    state.status = await apiJson("/admin/status");
    await sample();
  } catch (e) {
    if (e instanceof Unauthorized) return signIn(e.message);
    failure = e.message;
  }
  if (!current()) return;
  if (!state.status) { outageBanner(null, failure); return; }
  outageBanner(state.status, failure);
  document.getElementById("source-state").textContent = sourceLine(state.status);
  const rejected = (state.status.rejected || []).length;
  document.getElementById("rejected-count").textContent = rejected ? `(${rejected})` : "";
  document.getElementById("nav-edit").hidden = (state.status.source || {}).kind !== "etcd";
  const name = currentView();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === name);
  // The edit form is drawn once per visit, so a refresh never throws away what is typed.
  if (name === "edit" && document.getElementById("edit-yaml")) return;
  if (failure) return;
  try {
    await views[name](current);
  } catch (e) {
    if (!current()) return;
    if (e instanceof Unauthorized) return signIn(e.message);
    outageBanner(state.status, e.message);
  }
}

function signIn(message) {
  clearTimeout(state.timer);
  state.key = "";
  state.status = null;
  sessionStorage.removeItem(KEY_SLOT);
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("source-state").textContent = "";
  document.getElementById("outage").hidden = true;
  show();
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

// One refresh at a time: the next is planned when the last is done.
async function poll() {
  await refresh();
  if (state.status) state.timer = setTimeout(poll, POLL_MS);
}

async function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  clearTimeout(state.timer);
  await poll();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.key = document.getElementById("key").value;
    try {
      await apiJson("/admin/status");
    } catch (e) {
      return signIn(e instanceof Unauthorized ? "That key was refused." : e.message);
    }
    sessionStorage.setItem(KEY_SLOT, state.key);
    start();
  });
  document.getElementById("sign-out").addEventListener("click", () => signIn(""));
  window.addEventListener("hashchange", () => refresh());
  if (state.key) start(); else opensWithoutKey();
});

// With an empty `admin.api_key` the API's reads are open: the page opens without asking
// for a key no one has.
async function opensWithoutKey() {
  try {
    await apiJson("/admin/status");
  } catch (e) {
    return signIn(e instanceof Unauthorized ? "" : e.message);
  }
  start();
}
