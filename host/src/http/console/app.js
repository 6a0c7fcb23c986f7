// The Refold web console: a single-page app over the HTTP API, served by the host at `/`.
//
// Layout of this file:
//   1. DOM helpers (every untrusted string goes in through text nodes, never as HTML)
//   2. The API client (bearer token, error shape, server-sent events over fetch)
//   3. The token box
//   4. The router (hash routes) and the page lifecycle (timers and requests stop on leave)
//   5. Shared views (status badges, module tables, pretty-printed JSON, paging)
//   6. One function per page
"use strict";

/* ------------------------------------------------------------------ 1. DOM helpers */

/**
 * Builds an element. `attrs`: `class`, `on<event>` handlers, DOM properties for form state
 * (`value`, `checked`, `disabled`, ...), everything else as an attribute. Children: nodes,
 * strings (as text), arrays, and null/false/undefined (skipped).
 */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (PROPERTIES.has(key)) {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

const PROPERTIES = new Set(["value", "checked", "disabled", "selected", "hidden", "open"]);

/** Like `el.replaceChildren`, skipping null/false/undefined as `h` does. */
function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else parent.append(child instanceof Node ? child : String(child));
  }
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  return el;
}

const byId = (id) => document.getElementById(id);

const NUMBER = new Intl.NumberFormat("en-US");

function num(n) {
  return typeof n === "number" ? NUMBER.format(n) : n === null || n === undefined ? "—" : String(n);
}

function shortVersion(version) {
  return version ? String(version).slice(0, 12) : "—";
}

function bytes(n) {
  if (typeof n !== "number") return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function seconds(s) {
  if (typeof s !== "number") return "unknown";
  if (s < 1) return "< 1 s";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

/** An RFC 3339 time as the server sent it, with "3 s ago" in its tooltip. */
function timeCell(text) {
  if (!text) return h("span", { class: "muted" }, "—");
  const then = Date.parse(text);
  const title = Number.isNaN(then) ? text : `${text} (${ago(Date.now() - then)})`;
  return h("time", { datetime: text, title }, text.replace("T", " "));
}

function ago(ms) {
  if (ms < 0) return "just now";
  const s = ms / 1000;
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/* ------------------------------------------------------------------ 2. API client */

const TOKEN_KEY = "refold.token";

/** The token in local storage (shared with other tabs), or the one of this page. */
function currentToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return memoryToken;
  }
}

function storeToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token lasts as long as the page.
  }
  memoryToken = token;
  showSession();
}

/** Only used where local storage is disabled. */
let memoryToken = "";

class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

const isAbort = (err) => err && err.name === "AbortError";

/** A path with each interpolated value percent-encoded: api`/streams/${name}`. */
function path(strings, ...values) {
  return strings.reduce((out, s, i) => out + s + (i < values.length ? encodeURIComponent(values[i]) : ""), "");
}

/** Adds the non-empty parameters to a path. */
function withQuery(base, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${base}?${text}` : base;
}

/**
 * JSON as the server wrote it: integers beyond 2^53 keep their digits (where the browser
 * can represent raw JSON), so an event's data is shown exactly as it was recorded.
 */
function parseJson(text) {
  if (typeof JSON.rawJSON !== "function") return JSON.parse(text);
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && context &&
      /^-?\d+$/.test(context.source || "")
      ? JSON.rawJSON(context.source)
      : value,
  );
}

function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const token = currentToken();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  return headers;
}

/** The API's error shape turned into an ApiError; a 401 also opens the token box. */
async function failure(response) {
  const text = await response.text().catch(() => "");
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  const error = body && body.error ? body.error : {};
  const err = new ApiError(
    response.status,
    error.code || `http_${response.status}`,
    error.message || text || response.statusText || `HTTP ${response.status}`,
    body,
  );
  if (response.status === 401) openLogin(err.message, false);
  return err;
}

/**
 * One API call. `body`: an object (sent as JSON), a Blob/File, or nothing.
 * Resolves to `{status, body}`; rejects with an ApiError.
 */
async function request(url, { method = "GET", body, headers, signal, token } = {}) {
  const sent = authHeaders(headers);
  if (token !== undefined) {
    if (token) sent.set("Authorization", `Bearer ${token}`);
    else sent.delete("Authorization");
  }
  let payload = body;
  if (body !== undefined && !(body instanceof Blob) && typeof body !== "string") {
    sent.set("Content-Type", "application/json");
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, { method, headers: sent, body: payload, signal, cache: "no-store" });
  } catch (err) {
    if (isAbort(err)) throw err;
    throw new ApiError(0, "unreachable", `The server cannot be reached (${err.message}).`, null);
  }
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  return { status: response.status, body: text ? parseJson(text) : null };
}

async function api(url, options) {
  return (await request(url, options)).body;
}

/** What to tell the user about a failed call. */
function describe(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  if (err.status === 403) return `Your token's role cannot do this: ${err.message}`;
  if (err.status === 401) return `Sign in with a token to see this (${err.message}).`;
  if (err.status === 0) return err.message;
  return `${err.message} (${err.code}, HTTP ${err.status})`;
}

/**
 * Follows a server-sent event stream with fetch (EventSource cannot send the token).
 * Calls `onEvent(parsed, id)` for each event; resolves when the server ends the stream;
 * rejects on errors, or with an AbortError when `signal` fires.
 */
async function followEvents(url, { signal, lastEventId, onEvent, onOpen }) {
  const headers = authHeaders({ Accept: "text/event-stream" });
  if (lastEventId !== null && lastEventId !== undefined) headers.set("Last-Event-ID", String(lastEventId));
  let response;
  try {
    response = await fetch(url, { headers, signal, cache: "no-store" });
  } catch (err) {
    if (isAbort(err)) throw err;
    throw new ApiError(0, "unreachable", `The server cannot be reached (${err.message}).`, null);
  }
  if (!response.ok) throw await failure(response);
  if (onOpen) onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let name = "message";
  let id = null;
  const dispatch = () => {
    if (data.length) onEvent({ name, data: data.join("\n"), id });
    data = [];
    name = "message";
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (line === "") {
        dispatch();
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") data.push(text);
      else if (field === "event") name = text;
      else if (field === "id") id = text;
    }
  }
}

/* ------------------------------------------------------------------ 3. Token box */

function showSession() {
  const label = byId("login-open");
  if (label) label.textContent = currentToken() ? "Token ✓" : "Token";
  if (label) label.title = currentToken() ? "A token is set: change or forget it" : "Enter a token";
}

/** Set when the user closes the token box, so a refreshing page does not reopen it. */
let loginDismissed = false;

function openLogin(reason, byUser) {
  if (!byUser && loginDismissed) return;
  const box = byId("login");
  const wasHidden = box.hidden;
  byId("login-reason").textContent = byUser
    ? currentToken()
      ? "A token is set. Enter another one, or forget it."
      : "Enter a token (not needed when the server runs without authentication)."
    : `This server requires a token: ${reason}`;
  byId("login-forget").hidden = !currentToken();
  box.hidden = false;
  if (wasHidden) {
    byId("login-error").hidden = true;
    byId("login-token").value = "";
    byId("login-token").focus();
  }
}

function closeLogin() {
  byId("login").hidden = true;
}

async function submitLogin(event) {
  event.preventDefault();
  const input = byId("login-token");
  const token = input.value.trim();
  const error = byId("login-error");
  const button = byId("login-submit");
  error.hidden = true;
  if (!token) {
    error.textContent = "Enter a token.";
    error.hidden = false;
    return;
  }
  button.disabled = true;
  try {
    // Any read shows whether the server accepts the token.
    await request("/projections", { token });
    storeToken(token);
    closeLogin();
    flash("Signed in.", "ok");
    render();
  } catch (err) {
    error.textContent = err.status === 401
      ? `The server refused this token: ${err.message}`
      : describe(err);
    error.hidden = false;
    byId("login").hidden = false;
  } finally {
    button.disabled = false;
  }
}

function setUpLogin() {
  byId("login-form").addEventListener("submit", submitLogin);
  byId("login-open").addEventListener("click", () => openLogin("", true));
  byId("login-cancel").addEventListener("click", () => {
    loginDismissed = true;
    closeLogin();
  });
  byId("login-forget").addEventListener("click", () => {
    storeToken("");
    closeLogin();
    flash("The token is forgotten.", "info");
    render();
  });
  byId("login").addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeLogin();
  });
  showSession();
}

let flashTimer = null;

/** A short message at the top of the page that outlives a page change. */
function flash(text, kind = "info") {
  const el = byId("flash");
  el.textContent = text;
  el.className = `flash ${kind}`;
  el.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => {
    el.hidden = true;
  }, 6000);
}

/* ------------------------------------------------------------------ 4. Router */

/** A page's lifetime: its requests and timers end when the user leaves it. */
class Page {
  constructor(route) {
    this.route = route;
    this.controller = new AbortController();
    this.signal = this.controller.signal;
    this.timers = new Set();
  }

  get alive() {
    return !this.signal.aborted;
  }

  dispose() {
    this.controller.abort();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  api(url, options) {
    return api(url, { ...options, signal: this.signal });
  }

  /** Runs `fn` now and then `ms` after each run ends (never two at once). */
  every(ms, fn) {
    const tick = async () => {
      if (!this.alive) return;
      try {
        await fn();
      } catch (err) {
        if (!isAbort(err)) console.error(err);
      }
      if (!this.alive) return;
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        tick();
      }, ms);
      this.timers.add(timer);
    };
    tick();
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        resolve();
      }, ms);
      this.timers.add(timer);
    });
  }
}

/** `#/streams/account-1?from=3` → `{segments: ["streams", "account-1"], query}`. */
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const mark = raw.indexOf("?");
  const pathPart = mark >= 0 ? raw.slice(0, mark) : raw;
  const segments = pathPart.split("/").filter((s) => s !== "").map((s) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  });
  return { segments, query: new URLSearchParams(mark >= 0 ? raw.slice(mark + 1) : "") };
}

/** A hash link: link(["streams", name], {from: 3}). */
function link(segments, params) {
  const base = `#/${segments.map((s) => encodeURIComponent(s)).join("/")}`;
  return withQuery(base, params || {});
}

function go(segments, params) {
  const target = link(segments, params);
  if (location.hash === target) render();
  else location.hash = target;
}

const PAGES = {
  "": { nav: "dashboard", title: "Dashboard", show: pageDashboard },
  streams: { nav: "streams", title: "Streams", show: (view, page) => (page.route.segments.length > 1 ? pageStream(view, page) : pageStreams(view, page)) },
  all: { nav: "all", title: "Global log", show: pageAll },
  tail: { nav: "tail", title: "Live tail", show: pageTail },
  modules: { nav: "modules", title: "Modules", show: (view, page) => (page.route.segments.length > 1 ? pageModule(view, page) : pageModules(view, page)) },
  state: { nav: "state", title: "State", show: pageState },
  groups: { nav: "groups", title: "Consumer groups", show: (view, page) => (page.route.segments.length > 1 ? pageGroup(view, page) : pageGroups(view, page)) },
  deploy: { nav: "deploy", title: "Deploy", show: pageDeploy },
};

let currentPage = null;

function render() {
  if (currentPage) currentPage.dispose();
  loginDismissed = false;
  const route = parseHash();
  const entry = PAGES[route.segments[0] || ""];
  const view = byId("view");
  view.replaceChildren();
  const page = new Page(route);
  currentPage = page;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", Boolean(entry) && a.dataset.nav === entry.nav);
  }
  if (!entry) {
    view.dataset.page = "not-found";
    document.title = "Not found · Refold";
    view.append(h("h1", {}, "Not found"), h("p", {}, "No page here. ", h("a", { href: "#/" }, "Back to the dashboard")));
    return;
  }
  view.dataset.page = route.segments.length > 1 ? `${entry.nav}-detail` : entry.nav;
  document.title = `${route.segments.length > 1 ? route.segments[1] : entry.title} · Refold`;
  Promise.resolve(entry.show(view, page)).catch((err) => {
    if (!isAbort(err)) view.append(errorBox(err));
  });
}

/* ------------------------------------------------------------------ 5. Shared views */

function errorBox(err, testid = "error") {
  return h("div", { class: "alert error", "data-testid": testid, role: "alert" }, describe(err));
}

/** A slot that shows the latest error of a refreshing view, or nothing. */
function errorSlot(testid = "error") {
  const el = h("div", { class: "alert error", "data-testid": testid, role: "alert", hidden: true });
  return {
    el,
    show(err) {
      if (isAbort(err)) return;
      el.textContent = describe(err);
      el.hidden = false;
    },
    clear() {
      el.hidden = true;
    },
  };
}

function statusBadge(status) {
  return h("span", { class: `badge status-${status || "unknown"}`, "data-testid": "status" }, status || "unknown");
}

/** A good/bad badge with its own words (alive/gone, reachable/unreachable). */
function stateBadge(good, yes, no) {
  return h("span", { class: `badge status-${good ? "running" : "faulted"}`, "data-testid": "state" }, good ? yes : no);
}

function kindBadge(kind) {
  return h("span", { class: `badge kind-${kind}` }, kind);
}

/** JSON pretty-printed (two spaces), with keys, strings and numbers coloured. */
function jsonView(value, testid, extraClass) {
  const pre = h("pre", { class: `json ${extraClass || ""}`.trim(), "data-testid": testid });
  const text = JSON.stringify(value, null, 2);
  if (text === undefined) {
    pre.textContent = "undefined";
    return pre;
  }
  if (text.length > 200000) {
    pre.textContent = text;
    return pre;
  }
  const token = /("(?:[^"\\]|\\.)*")(\s*:)?|\b(?:true|false)\b|\bnull\b|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;
  let last = 0;
  for (const match of text.matchAll(token)) {
    if (match.index > last) pre.append(text.slice(last, match.index));
    const [all, string, colon] = match;
    if (string && colon) {
      pre.append(h("span", { class: "j-key" }, string), colon);
    } else {
      const cls = string ? "j-str" : all === "null" ? "j-null" : all === "true" || all === "false" ? "j-bool" : "j-num";
      pre.append(h("span", { class: cls }, all));
    }
    last = match.index + all.length;
  }
  pre.append(text.slice(last));
  return pre;
}

/** One line of JSON, for tables. */
function compactJson(value) {
  const text = JSON.stringify(value);
  return text === undefined ? "" : text;
}

function progressBar(percent, testid) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  const fill = h("div", { class: "progress-fill" });
  fill.style.width = `${value}%`;
  return h("div", { class: "progress", role: "progressbar", "aria-valuenow": value, "aria-valuemin": 0, "aria-valuemax": 100, "data-testid": testid || "progress" }, fill);
}

/** Rebuild progress as the API reports it for a version: bar, percent, rate, ETA. */
function rebuildProgress(progress, label) {
  if (!progress) return null;
  const eta = progress.eta_seconds === null || progress.eta_seconds === undefined ? "ETA unknown" : `ETA ${seconds(progress.eta_seconds)}`;
  return h("div", { class: "rebuild", "data-testid": "rebuild-progress" },
    label ? h("div", { class: "small muted" }, label) : null,
    progressBar(progress.percent),
    h("div", { class: "small" },
      h("strong", { "data-testid": "rebuild-percent" }, `${num(progress.percent)}%`),
      ` · ${num(progress.events_per_second)} events/s · ${eta}`));
}

/** What a module's progress cell says: rebuilding current version, or a candidate. */
function moduleProgress(module, details) {
  if (details && details.rebuild) {
    return rebuildProgress(details.rebuild.progress, `new version ${shortVersion(details.rebuild.version)}`);
  }
  if (module.status === "rebuilding") {
    const current = details && (details.versions || []).find((v) => v.role === "current");
    if (current && current.progress) return rebuildProgress(current.progress);
    const head = module.position + module.lag;
    return rebuildProgress({ percent: head ? Math.round((module.position * 1000) / head) / 10 : 100, events_per_second: null, eta_seconds: null });
  }
  if (module.status === "running" && module.lag === 0) return h("span", { class: "muted small" }, "caught up");
  if (module.status === "faulted") return h("span", { class: "small status-text-faulted" }, `stopped at position ${num(module.position)}`);
  if (module.status === "paused") return h("span", { class: "small status-text-paused" }, `paused at position ${num(module.position)}`);
  return h("span", { class: "muted small" }, "—");
}

const NUMERIC_COLUMNS = new Set(["Position", "Lag", "Processed", "Dead letters"]);

function moduleDetailCells(module, details) {
  const counters = (details && details.counters) || {};
  return [
    h("td", { class: "num" }, num(counters.events_processed)),
    h("td", { class: "num" }, num(counters.dead_letters)),
    h("td", { class: "nowrap small" }, details && details.deployed_at ? h("span", { title: details.deployed_at }, ago(Date.now() - Date.parse(details.deployed_at))) : "—"),
    h("td", { class: "progress-cell", "data-testid": "module-progress" }, moduleProgress(module, details)),
  ];
}

/** The modules table of the dashboard and the modules page. */
function modulesTable(modules, { details, testid = "modules-table" } = {}) {
  const withProgress = Boolean(details);
  const columns = ["Name", "Kind", "Status", "Version", "Position", "Lag"];
  if (withProgress) columns.push("Processed", "Dead letters", "Deployed", "Progress");
  const body = h("tbody");
  if (!modules.length) {
    body.append(h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, "No module is deployed. ", h("a", { href: "#/deploy" }, "Deploy one"), ".")));
  }
  for (const module of modules) {
    const moduleDetails = details ? details.get(module.name) : null;
    body.append(h("tr", { "data-testid": "module-row", "data-name": module.name, "data-status": module.status },
      h("td", {}, h("a", { href: link(["modules", module.name]), "data-testid": "module-link" }, module.name)),
      h("td", {}, kindBadge(module.kind)),
      h("td", { "data-testid": "module-status" }, statusBadge(module.status)),
      h("td", { class: "mono", title: module.version }, shortVersion(module.version)),
      h("td", { class: "num", "data-testid": "module-position" }, num(module.position)),
      h("td", { class: `num ${module.lag > 0 ? "lagging" : ""}`, "data-testid": "module-lag" }, num(module.lag)),
      withProgress ? moduleDetailCells(module, moduleDetails) : null));
    if (module.error) {
      body.append(h("tr", { class: "fault-row", "data-testid": "module-error-row", "data-name": module.name },
        h("td", { colspan: columns.length },
          h("pre", { class: "fault-message", "data-testid": "module-error" }, module.error))));
    }
  }
  return h("table", { class: "table", "data-testid": testid },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: NUMERIC_COLUMNS.has(c) ? "num" : null }, c)))),
    body);
}

function section(title, ...children) {
  return h("section", { class: "panel" }, title ? h("h2", {}, title) : null, ...children);
}

function stat(label, valueEl, note) {
  return h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), valueEl, note || null);
}

function pager(...buttons) {
  return h("div", { class: "pager" }, ...buttons);
}

function pageButton(label, testid, target, enabled = true) {
  if (!enabled || !target) return h("button", { type: "button", disabled: true, "data-testid": testid }, label);
  return h("a", { class: "button", href: target, "data-testid": testid }, label);
}

/** One event: revision, position, type, time, id, then data and metadata pretty-printed. */
function eventCard(event, { showStream = false } = {}) {
  const metadataEmpty = event.metadata && typeof event.metadata === "object" && !Array.isArray(event.metadata) && Object.keys(event.metadata).length === 0;
  return h("article", { class: "event", "data-testid": "event", "data-revision": event.revision, "data-position": event.position, "data-id": event.id },
    h("header", { class: "event-head" },
      h("span", { class: "event-rev", "data-testid": "event-revision", title: "revision in its stream" }, `#${event.revision}`),
      h("span", { class: "event-type", "data-testid": "event-type" }, event.type),
      showStream ? h("a", { href: link(["streams", event.stream]) }, event.stream) : null,
      h("span", { class: "event-meta" }, "position ", h("strong", { "data-testid": "event-position" }, num(event.position))),
      h("span", { class: "event-meta", "data-testid": "event-recorded" }, timeCell(event.recorded_at)),
      h("code", { class: "event-id", "data-testid": "event-id", title: "event id" }, event.id)),
    h("div", { class: "event-body" },
      h("div", { class: "event-data" }, h("div", { class: "label" }, "data"), jsonView(event.data, "event-data")),
      h("div", { class: `event-metadata ${metadataEmpty ? "empty" : ""}` }, h("div", { class: "label" }, "metadata"), jsonView(event.metadata, "event-metadata"))));
}

/** A table row's data cell: one line that opens to pretty-printed JSON. */
function jsonDetails(value, testid) {
  return h("details", { class: "json-details" },
    h("summary", { class: "mono", title: "show pretty-printed" }, compactJson(value)),
    jsonView(value, testid));
}

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), input, hint ? h("span", { class: "hint" }, hint) : null);
}

/* ------------------------------------------------------------------ 6. Pages */

/* Dashboard: log head, append rate, modules. */
async function pageDashboard(view, page) {
  const head = h("div", { class: "stat-value", "data-testid": "dash-head" }, "…");
  const rate = h("div", { class: "stat-value", "data-testid": "dash-rate" }, "…");
  const count = h("div", { class: "stat-value", "data-testid": "dash-modules" }, "…");
  const breakdown = h("div", { class: "stat-note", "data-testid": "dash-modules-breakdown" });
  const lagTotal = h("div", { class: "stat-value", "data-testid": "dash-lag" }, "…");
  const spark = svg("svg", { class: "spark", viewBox: "0 0 120 30", preserveAspectRatio: "none", "data-testid": "dash-rate-chart" });
  const line = svg("polyline", { points: "" });
  spark.append(line);
  const errors = errorSlot();
  const modulesHolder = h("div", { "data-testid": "dash-modules-table" }, h("p", { class: "muted" }, "Loading…"));
  const recentHolder = h("div", { "data-testid": "dash-recent" }, h("p", { class: "muted" }, "Loading…"));
  const clusterHolder = h("div", { "data-testid": "dash-cluster" }, h("p", { class: "muted" }, "Loading…"));
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Dashboard"), h("span", { class: "muted small" }, "refreshes every second")),
    errors.el,
    h("div", { class: "stats" },
      stat("Log head", head, h("div", { class: "stat-note" }, "events in the log")),
      stat("Append rate", rate, h("div", { class: "stat-note" }, spark, "events/s, last 60 s")),
      stat("Modules", count, breakdown),
      stat("Total lag", lagTotal, h("div", { class: "stat-note" }, "events behind the head, all modules"))),
    section("Modules", modulesHolder),
    section("Latest events", recentHolder),
    section("Cluster", clusterHolder));

  let clusterTick = 0;
  const samples = [];
  let shownHead = null;
  page.every(1000, async () => {
    const [health, listing] = await Promise.allSettled([page.api("/health"), page.api("/projections")]);
    if (!page.alive) return;
    errors.clear();
    if (health.status === "fulfilled") {
      const now = performance.now();
      samples.push({ t: now, head: health.value.head });
      while (samples.length > 61) samples.shift();
      head.textContent = num(health.value.head);
      head.dataset.value = health.value.head;
      rate.textContent = appendRate(samples);
      drawSpark(line, samples);
    } else {
      errors.show(health.reason);
    }
    if (listing.status === "fulfilled") {
      const modules = listing.value.projections;
      count.textContent = num(modules.length);
      const by = {};
      for (const m of modules) by[m.status] = (by[m.status] || 0) + 1;
      replace(breakdown, ...Object.entries(by).map(([status, n]) => h("span", { class: `tally status-text-${status}` }, `${n} ${status}`)));
      lagTotal.textContent = num(modules.reduce((sum, m) => sum + (m.lag || 0), 0));
      replace(modulesHolder, modulesTable(modules));
    } else {
      errors.show(listing.reason);
      replace(modulesHolder, h("p", { class: "muted" }, "Unavailable."));
    }
    if (clusterTick++ % 3 === 0) {
      try {
        replace(clusterHolder, clusterView(await page.api("/cluster")));
      } catch (err) {
        replace(clusterHolder, h("p", { class: "muted" }, `Unavailable: ${err.message || err}`));
      }
    }
    if (health.status === "fulfilled" && health.value.head !== shownHead && listing.status === "fulfilled") {
      const top = health.value.head;
      const recent = await page.api(withQuery("/all", { from: Math.max(0, top - 8), limit: 8 }));
      shownHead = top;
      replace(recentHolder, logTable(recent.events.slice().reverse(), "dash-recent-table"));
    }
  });
}

/** GET /cluster: the hosts (this one marked), what each runs, and the NATS servers. */
function clusterView(cluster) {
  const hosts = h("tbody");
  for (const host of cluster.hosts) {
    hosts.append(h("tr", { "data-testid": "cluster-host", "data-id": host.id, "data-alive": String(host.alive) },
      h("td", { class: "mono" }, host.id, host.id === cluster.id ? h("span", { class: "muted small" }, " (this host)") : null),
      h("td", { class: "mono" }, host.address),
      h("td", {}, stateBadge(host.alive, "alive", "gone")),
      h("td", {}, host.modules.length ? host.modules.join(", ") : h("span", { class: "muted" }, "none"))));
  }
  const parts = [h("table", { class: "table", "data-testid": "cluster-hosts" },
    h("thead", {}, h("tr", {}, ["Host", "Address", "State", "Runs"].map((c) => h("th", {}, c)))), hosts)];
  if (cluster.nats.length) {
    const servers = h("tbody");
    for (const server of cluster.nats) {
      servers.append(h("tr", { "data-testid": "cluster-nats" },
        h("td", { class: "mono" }, server.url, server.current ? h("span", { class: "muted small" }, " (in use)") : null),
        h("td", {}, stateBadge(server.connected, "reachable", "unreachable"))));
    }
    parts.push(h("table", { class: "table", "data-testid": "cluster-nats-servers" },
      h("thead", {}, h("tr", {}, ["NATS server", "State"].map((c) => h("th", {}, c)))), servers));
  } else {
    parts.push(h("p", { class: "muted small" }, "A single node on its embedded store."));
  }
  return h("div", {}, ...parts);
}

/** Events per second over the last 5 seconds of samples. */
function appendRate(samples) {
  if (samples.length < 2) return "…";
  const last = samples[samples.length - 1];
  const first = samples.find((s) => last.t - s.t <= 5500) || samples[0];
  const dt = (last.t - first.t) / 1000;
  if (dt <= 0) return "…";
  const value = (last.head - first.head) / dt;
  return value < 10 ? value.toFixed(1) : num(Math.round(value));
}

function drawSpark(line, samples) {
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].t - samples[i - 1].t) / 1000;
    rates.push(dt > 0 ? (samples[i].head - samples[i - 1].head) / dt : 0);
  }
  while (rates.length < 60) rates.unshift(0);
  const max = Math.max(1, ...rates);
  const step = 120 / (rates.length - 1);
  line.setAttribute("points", rates.map((r, i) => `${(i * step).toFixed(1)},${(29 - (r / max) * 27).toFixed(1)}`).join(" "));
}

/** Events of the global log as a table (position, stream, revision, type, time, data). */
function logTable(events, testid) {
  const body = h("tbody");
  if (!events.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No events.")));
  for (const e of events) {
    body.append(h("tr", { "data-testid": "log-row", "data-position": e.position },
      h("td", { class: "num mono" }, num(e.position)),
      h("td", {}, h("a", { href: link(["streams", e.stream], { from: e.revision, dir: "forward" }) }, e.stream)),
      h("td", { class: "num" }, num(e.revision)),
      h("td", { class: "event-type-cell" }, e.type),
      h("td", { class: "nowrap small" }, timeCell(e.recorded_at)),
      h("td", { class: "data-cell" }, jsonDetails(e.data, "log-data"))));
  }
  return h("table", { class: "table", "data-testid": testid },
    h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Position"), h("th", {}, "Stream"), h("th", { class: "num" }, "Rev"), h("th", {}, "Type"), h("th", {}, "Recorded"), h("th", {}, "Data"))),
    body);
}

/* Streams: list by prefix or category, paged with `next`. */
const streamTrail = { key: null, afters: [] };

async function pageStreams(view, page) {
  const q = page.route.query;
  const prefix = q.get("prefix") || "";
  const after = q.get("after") || "";
  const limit = q.get("limit") || "50";
  const trailKey = `${prefix}|${limit}`;
  if (streamTrail.key !== trailKey) {
    streamTrail.key = trailKey;
    streamTrail.afters = [];
  }
  const prefixInput = h("input", { type: "search", value: prefix, placeholder: "e.g. account-", "data-testid": "streams-prefix", spellcheck: "false" });
  const category = h("select", { "data-testid": "streams-category" }, h("option", { value: "" }, "all categories"));
  const limitSelect = h("select", { "data-testid": "streams-limit" }, ["20", "50", "100", "500"].map((n) => h("option", { value: n, selected: n === limit }, n)));
  const apply = () => go(["streams"], { prefix: prefixInput.value, limit: limitSelect.value });
  category.addEventListener("change", () => {
    prefixInput.value = category.value ? `${category.value}-` : "";
    apply();
  });
  limitSelect.addEventListener("change", apply);
  const form = h("form", { class: "filters", "data-testid": "streams-filter-form", onsubmit: (e) => { e.preventDefault(); apply(); } },
    field("Prefix", prefixInput),
    field("Category", category),
    field("Per page", limitSelect),
    h("button", { type: "submit", class: "primary", "data-testid": "streams-filter" }, "Filter"));
  const errors = errorSlot();
  const holder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  view.append(h("div", { class: "page-head" }, h("h1", {}, "Streams"), h("a", { href: "#/all", class: "small" }, "Global log →")), form, errors.el, holder);

  try {
    const listing = await page.api(withQuery("/streams", { prefix, after, limit }));
    const body = h("tbody");
    if (!listing.streams.length) body.append(h("tr", {}, h("td", { colspan: 4, class: "empty" }, prefix ? `No stream starts with “${prefix}”.` : "No streams yet.")));
    for (const s of listing.streams) {
      body.append(h("tr", { "data-testid": "stream-row", "data-stream": s.stream },
        h("td", {}, h("a", { href: link(["streams", s.stream]), "data-testid": "stream-link" }, s.stream)),
        h("td", {}, h("a", { href: link(["streams"], { prefix: `${categoryOf(s.stream)}-` }), class: "muted" }, categoryOf(s.stream))),
        h("td", { class: "num" }, num(s.last_revision + 1)),
        h("td", { class: "num" }, num(s.last_revision))));
    }
    const firstTarget = after ? link(["streams"], { prefix, limit }) : null;
    const previousAfter = streamTrail.afters.length ? streamTrail.afters[streamTrail.afters.length - 1] : null;
    const previous = after && previousAfter !== null ? link(["streams"], { prefix, limit, after: previousAfter }) : firstTarget;
    const next = h("button", { type: "button", "data-testid": "streams-next", disabled: !listing.next, onclick: () => {
      streamTrail.afters.push(after);
      go(["streams"], { prefix, limit, after: listing.next });
    } }, "Next ›");
    const back = h("button", { type: "button", "data-testid": "streams-prev", disabled: !previous, onclick: () => {
      streamTrail.afters.pop();
      location.hash = previous;
    } }, "‹ Previous");
    replace(holder,
      h("table", { class: "table", "data-testid": "streams-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Stream"), h("th", {}, "Category"), h("th", { class: "num" }, "Events"), h("th", { class: "num" }, "Last revision"))),
        body),
      pager(pageButton("« First", "streams-first", firstTarget, Boolean(after)), back, next,
        h("span", { class: "muted small", "data-testid": "streams-count" }, `${listing.streams.length} stream${listing.streams.length === 1 ? "" : "s"} on this page${after ? ` after “${after}”` : ""}`)));
  } catch (err) {
    errors.show(err);
    holder.replaceChildren();
    return;
  }
  fillCategories(page, category, prefix);
}

function categoryOf(stream) {
  const dash = stream.indexOf("-");
  return dash < 0 ? stream : stream.slice(0, dash);
}

/**
 * Lists the categories by hopping over each one: the first stream after `cat-<max>` starts
 * the next category. One small request per category, at most 200.
 */
const categoryCache = { at: 0, list: [] };

async function fillCategories(page, select, prefix) {
  const found = await listCategories(page);
  if (!page.alive) return;
  for (const cat of found) {
    select.append(h("option", { value: cat, selected: prefix === `${cat}-` }, cat));
  }
}

async function listCategories(page) {
  if (Date.now() - categoryCache.at < 30000) return categoryCache.list;
  const found = [];
  let after = "";
  const highest = "\u{10FFFF}".repeat(4);
  let complete = true;
  for (let i = 0; i < 200; i++) {
    const listing = await page.api(withQuery("/streams", { after, limit: 1 })).catch(() => null);
    if (!listing || !page.alive) {
      complete = false;
      break;
    }
    if (!listing.streams.length) break;
    const cat = categoryOf(listing.streams[0].stream);
    found.push(cat);
    after = `${cat}-${highest}`;
  }
  if (complete) Object.assign(categoryCache, { at: Date.now(), list: found });
  return found;
}

/* One stream's events, paged forward or backward. */
async function pageStream(view, page) {
  const name = page.route.segments.slice(1).join("/");
  const q = page.route.query;
  const dir = q.get("dir") === "forward" ? "forward" : "backward";
  const from = q.get("from") || "";
  const limit = Number(q.get("limit") || 20);
  const errors = errorSlot();
  const info = h("div", { class: "muted small", "data-testid": "stream-info" });
  const links = h("div", { class: "links" },
    h("a", { href: link(["tail"], { stream: name }), "data-testid": "stream-follow" }, "Follow live"));
  const jumpInput = h("input", { type: "number", min: 0, placeholder: "revision", class: "narrow", "data-testid": "stream-jump" });
  const directionToggle = h("div", { class: "segmented" },
    h("a", { class: `button ${dir === "backward" ? "selected" : ""}`, href: link(["streams", name], { limit }), "data-testid": "stream-newest" }, "Newest first"),
    h("a", { class: `button ${dir === "forward" ? "selected" : ""}`, href: link(["streams", name], { dir: "forward", from: 0, limit }), "data-testid": "stream-oldest" }, "Oldest first"));
  const jump = h("form", { class: "inline-form", onsubmit: (e) => { e.preventDefault(); if (jumpInput.value !== "") go(["streams", name], { dir: "forward", from: jumpInput.value, limit }); } },
    jumpInput, h("button", { type: "submit" }, "Go to revision"));
  const sizes = h("select", { "data-testid": "stream-limit", title: "events per page" }, [10, 20, 50, 100].map((n) => h("option", { value: n, selected: n === limit }, `${n} per page`)));
  sizes.addEventListener("change", () => go(["streams", name], { dir, from, limit: sizes.value }));
  const holder = h("div", { "data-testid": "stream-events" }, h("p", { class: "muted" }, "Loading…"));
  const pagerTop = h("div");
  const pagerBottom = h("div");
  view.append(
    h("div", { class: "crumbs" }, h("a", { href: "#/streams" }, "Streams"), " / ", h("a", { href: link(["streams"], { prefix: `${categoryOf(name)}-` }) }, categoryOf(name))),
    h("div", { class: "page-head" }, h("h1", { "data-testid": "stream-name" }, name), links),
    info,
    h("div", { class: "toolbar" }, directionToggle, jump, sizes, pagerTop),
    errors.el, holder, pagerBottom);

  const [reading, meta, modules] = await Promise.allSettled([
    page.api(withQuery(path`/streams/${name}`, { from, limit, direction: dir })),
    page.api(withQuery("/streams", { prefix: name, limit: 1 })),
    page.api("/projections"),
  ]);
  if (!page.alive) return;
  if (modules.status === "fulfilled") {
    for (const m of modules.value.projections.filter((m) => m.kind === "reducer")) {
      links.append(h("a", { href: link(["state"], { module: m.name, stream: name }) }, `State in ${m.name}`));
    }
  }
  const last = meta.status === "fulfilled" && meta.value.streams.length && meta.value.streams[0].stream === name ? meta.value.streams[0].last_revision : null;
  if (last !== null) info.textContent = `${num(last + 1)} events · last revision ${num(last)} · category ${categoryOf(name)}`;
  if (reading.status === "rejected") {
    errors.show(reading.reason);
    holder.replaceChildren();
    return;
  }
  const { events, next } = reading.value;
  replace(holder, ...(events.length ? events.map((e) => eventCard(e)) : [h("p", { class: "empty" }, "No events in this range.")]));
  const first = events.length ? events[0].revision : Number(from || 0);
  let previous = null;
  if (dir === "forward" && first > 0) previous = link(["streams", name], { dir, from: Math.max(0, first - limit), limit });
  if (dir === "backward" && from !== "" && last !== null && first < last) {
    previous = first + limit >= last ? link(["streams", name], { limit }) : link(["streams", name], { from: first + limit, limit });
  }
  const nextTarget = next === null || next === undefined ? null : link(["streams", name], { dir, from: next, limit });
  const range = events.length ? `revisions ${num(events[0].revision)}–${num(events[events.length - 1].revision)}` : "";
  const makePager = (suffix) => pager(
    pageButton(dir === "forward" ? "‹ Earlier" : "‹ Newer", `stream-prev${suffix}`, previous),
    pageButton(dir === "forward" ? "Later ›" : "Older ›", `stream-next${suffix}`, nextTarget),
    h("span", { class: "muted small", "data-testid": `stream-range${suffix}` }, range));
  replace(pagerTop, makePager(""));
  replace(pagerBottom, makePager("-bottom"));
}

/* The global log, with type and category filters. */
async function pageAll(view, page) {
  const q = page.route.query;
  const from = q.get("from") || "0";
  const limit = Number(q.get("limit") || 50);
  const type = q.get("type") || "";
  const category = q.get("category") || "";
  const fromInput = h("input", { type: "number", min: 0, value: from, class: "narrow", "data-testid": "all-from" });
  const typeInput = h("input", { type: "search", value: type, placeholder: "e.g. Deposited,Withdrawn", "data-testid": "all-type", spellcheck: "false" });
  const categoryInput = h("input", { type: "search", value: category, placeholder: "e.g. account", "data-testid": "all-category", spellcheck: "false" });
  const apply = (e) => {
    e.preventDefault();
    go(["all"], { from: fromInput.value || 0, limit, type: typeInput.value.trim(), category: categoryInput.value.trim() });
  };
  const errors = errorSlot();
  const holder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const pagerTop = h("div");
  const pagerBottom = h("div");
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Global log"), h("span", { class: "muted small", "data-testid": "all-head" })),
    h("form", { class: "filters", onsubmit: apply, "data-testid": "all-form" },
      field("From position", fromInput),
      field("Types", typeInput),
      field("Categories", categoryInput),
      h("button", { type: "submit", class: "primary", "data-testid": "all-apply" }, "Apply")),
    pagerTop, errors.el, holder, pagerBottom);
  const [reading, health] = await Promise.allSettled([
    page.api(withQuery("/all", { from, limit, type, category })),
    page.api("/health"),
  ]);
  if (!page.alive) return;
  const top = health.status === "fulfilled" ? health.value.head : null;
  if (top !== null) view.querySelector("[data-testid=all-head]").textContent = `log head ${num(top)}`;
  if (reading.status === "rejected") {
    errors.show(reading.reason);
    holder.replaceChildren();
    return;
  }
  const { events, next } = reading.value;
  replace(holder, logTable(events, "all-table"));
  const filtered = Boolean(type || category);
  const start = Number(from);
  const keep = { limit, type, category };
  const makePager = (suffix) => pager(
    pageButton("« Oldest", `all-oldest${suffix}`, link(["all"], { ...keep, from: 0 }), start > 0),
    pageButton("‹ Previous", `all-prev${suffix}`, link(["all"], { ...keep, from: Math.max(0, start - limit) }), !filtered && start > 0),
    pageButton("Next ›", `all-next${suffix}`, next === null ? null : link(["all"], { ...keep, from: next })),
    pageButton("Latest »", `all-latest${suffix}`, top === null ? null : link(["all"], { ...keep, from: Math.max(0, top - limit) })),
    h("span", { class: "muted small" }, events.length ? `positions ${num(events[0].position)}–${num(events[events.length - 1].position)}` : ""));
  replace(pagerTop, makePager(""));
  replace(pagerBottom, makePager("-bottom"));
}

/* Live tail of the log (or one stream): newest on top, the last 200 kept. */
const TAIL_KEEP = 200;

async function pageTail(view, page) {
  const q = page.route.query;
  const stream = q.get("stream") || "";
  const type = q.get("type") || "";
  const category = q.get("category") || "";
  const fromParam = q.get("from") || "";
  const startSelect = h("select", { "data-testid": "tail-start" },
    h("option", { value: "head", selected: fromParam === "" }, "now (the log head)"),
    h("option", { value: "position", selected: fromParam !== "" }, stream ? "revision…" : "position…"));
  const fromInput = h("input", { type: "number", min: 0, value: fromParam, class: "narrow", placeholder: stream ? "revision" : "position", hidden: fromParam === "", "data-testid": "tail-from" });
  startSelect.addEventListener("change", () => {
    fromInput.hidden = startSelect.value !== "position";
    if (!fromInput.hidden) fromInput.focus();
  });
  const streamInput = h("input", { type: "search", value: stream, placeholder: "all streams", "data-testid": "tail-stream", spellcheck: "false" });
  const typeInput = h("input", { type: "search", value: type, placeholder: "any", "data-testid": "tail-type", spellcheck: "false" });
  const categoryInput = h("input", { type: "search", value: category, placeholder: "any", "data-testid": "tail-category", spellcheck: "false" });
  const form = h("form", { class: "filters", "data-testid": "tail-form", onsubmit: (e) => {
    e.preventDefault();
    go(["tail"], {
      stream: streamInput.value.trim(),
      type: typeInput.value.trim(),
      category: categoryInput.value.trim(),
      from: startSelect.value === "position" ? fromInput.value : "",
    });
  } },
  field("Start at", h("span", { class: "inline" }, startSelect, fromInput)),
  field("Stream", streamInput),
  field("Types", typeInput, stream ? "whole log only" : null),
  field("Categories", categoryInput, stream ? "whole log only" : null),
  h("button", { type: "submit", class: "primary", "data-testid": "tail-apply" }, "Follow"));

  const status = h("span", { class: "tail-status", "data-testid": "tail-status" }, "connecting…");
  const counter = h("span", { class: "muted small", "data-testid": "tail-count" }, "");
  const pauseButton = h("button", { type: "button", "data-testid": "tail-pause" }, "Pause");
  const clearButton = h("button", { type: "button", "data-testid": "tail-clear" }, "Clear");
  const body = h("tbody", { "data-testid": "tail-list" });
  const empty = h("p", { class: "empty", "data-testid": "tail-empty" }, "Waiting for events…");
  const errors = errorSlot();
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, stream ? `Live tail of ${stream}` : "Live tail"), h("span", { class: "muted small" }, `newest on top, the last ${TAIL_KEEP} kept`)),
    form,
    h("div", { class: "toolbar" }, status, pauseButton, clearButton, counter),
    errors.el,
    h("table", { class: "table tail-table", "data-testid": "tail-table" },
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Position"), h("th", {}, "Stream"), h("th", { class: "num" }, "Rev"), h("th", {}, "Type"), h("th", {}, "Recorded"), h("th", {}, "Data"))),
      body),
    empty);

  let received = 0;
  let lastPosition = null;
  let paused = false;
  let connection = null;
  let pending = [];
  let frame = 0;

  const setStatus = (text, kind) => {
    status.textContent = text;
    status.className = `tail-status ${kind}`;
    status.dataset.state = kind;
  };
  const flush = () => {
    frame = 0;
    const batch = pending.slice(-TAIL_KEEP);
    pending = [];
    const rows = batch.map((e) => h("tr", { "data-testid": "tail-event", "data-position": e.position, "data-type": e.type, class: "fresh" },
      h("td", { class: "num mono" }, num(e.position)),
      h("td", {}, h("a", { href: link(["streams", e.stream], { from: e.revision, dir: "forward" }) }, e.stream)),
      h("td", { class: "num" }, num(e.revision)),
      h("td", { class: "event-type-cell", "data-testid": "tail-event-type" }, e.type),
      h("td", { class: "nowrap small" }, timeCell(e.recorded_at)),
      h("td", { class: "data-cell" }, jsonDetails(e.data, "tail-event-data"))));
    body.prepend(...rows.reverse());
    while (body.rows.length > TAIL_KEEP) body.lastElementChild.remove();
    empty.hidden = body.rows.length > 0;
    counter.textContent = `${num(received)} received${lastPosition === null ? "" : ` · last position ${num(lastPosition)}`}`;
  };
  const onEvent = ({ name, data, id }) => {
    if (name === "error") {
      errors.show(new Error(`The server ended the subscription: ${data}`));
      return;
    }
    let event;
    try {
      event = parseJson(data);
    } catch {
      return;
    }
    received += 1;
    lastPosition = id !== null ? Number(id) : event.position;
    pending.push(event);
    if (!frame) frame = requestAnimationFrame(flush);
  };

  let start = fromParam;
  const run = async () => {
    if (start === "") {
      // "Now": the head of the log, or of the stream.
      if (stream) {
        const found = await page.api(withQuery("/streams", { prefix: stream, limit: 1 })).catch(() => null);
        const s = found && found.streams.find((x) => x.stream === stream);
        start = s ? s.last_revision + 1 : 0;
      } else {
        start = (await page.api("/health")).head;
      }
    }
    const url = stream
      ? withQuery(path`/subscribe/streams/${stream}`, { from: start })
      : withQuery("/subscribe/all", { from: start, type, category });
    let delay = 500;
    while (page.alive && !paused) {
      connection = new AbortController();
      const stop = () => connection.abort();
      page.signal.addEventListener("abort", stop, { once: true });
      try {
        setStatus(lastPosition === null ? "connecting…" : "reconnecting…", "connecting");
        await followEvents(url, {
          signal: connection.signal,
          lastEventId: lastPosition,
          onEvent,
          onOpen: () => {
            errors.clear();
            delay = 500;
            setStatus(`● live from ${stream ? "revision" : "position"} ${num(Number(start))}`, "live");
          },
        });
      } catch (err) {
        if (isAbort(err)) break;
        errors.show(err);
        if (err.status === 401 || err.status === 403 || err.status === 400 || err.status === 404) {
          setStatus("stopped", "stopped");
          return;
        }
      } finally {
        page.signal.removeEventListener("abort", stop);
      }
      if (!page.alive || paused) break;
      setStatus("reconnecting…", "connecting");
      await page.sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
    if (paused) setStatus("❚❚ paused", "paused");
  };

  pauseButton.addEventListener("click", () => {
    paused = !paused;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    if (paused) {
      if (connection) connection.abort();
      setStatus("❚❚ paused", "paused");
    } else {
      run().catch((err) => errors.show(err));
    }
  });
  clearButton.addEventListener("click", () => {
    body.replaceChildren();
    empty.hidden = false;
  });
  run().catch((err) => {
    if (!isAbort(err)) {
      errors.show(err);
      setStatus("stopped", "stopped");
    }
  });
}

/* Modules: every module with status, lag and rebuild progress. */
async function pageModules(view, page) {
  const errors = errorSlot();
  const holder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Modules"),
      h("a", { class: "button primary push", href: "#/deploy", "data-testid": "modules-deploy" }, "Deploy a module")),
    errors.el, holder);
  page.every(2000, async () => {
    try {
      const listing = await page.api("/projections");
      const details = new Map();
      const answers = await Promise.allSettled(listing.projections.map((m) => page.api(path`/projections/${m.name}`)));
      answers.forEach((answer, i) => {
        if (answer.status === "fulfilled") details.set(listing.projections[i].name, answer.value);
      });
      if (!page.alive) return;
      errors.clear();
      replace(holder, modulesTable(listing.projections, { details }));
    } catch (err) {
      errors.show(err);
    }
  });
}

/** A group's source as words: "all", "stream order-7", "category order". */
function groupSource(source) {
  if (source === "all") return "all streams";
  if (source && source.stream !== undefined) return `stream ${source.stream}`;
  if (source && source.category !== undefined) return `category ${source.category}`;
  return compactJson(source);
}

/* Consumer groups: every group with its progress. */
async function pageGroups(view, page) {
  const errors = errorSlot();
  const holder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  view.append(h("div", { class: "page-head" }, h("h1", {}, "Consumer groups")), errors.el, holder);
  page.every(2000, async () => {
    try {
      const listing = await page.api("/subscriptions");
      if (!page.alive) return;
      errors.clear();
      const columns = ["Group", "Source", "Types", "Ordering", "Position", "Lag", "In flight", "Parked", "Delivered", "Acked", "Workers"];
      const numeric = new Set(["Position", "Lag", "In flight", "Parked", "Delivered", "Acked", "Workers"]);
      const body = h("tbody");
      if (!listing.subscriptions.length) {
        body.append(h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, "No consumer group yet. Create one with ", h("code", {}, "refold group create NAME"), " or PUT /subscriptions/NAME.")));
      }
      for (const g of listing.subscriptions) {
        body.append(h("tr", { "data-testid": "group-row", "data-name": g.group },
          h("td", {}, h("a", { href: link(["groups", g.group]), "data-testid": "group-link" }, g.group)),
          h("td", {}, groupSource(g.source)),
          h("td", { class: "small" }, g.types ? g.types.join(", ") : "all"),
          h("td", {}, g.ordering),
          h("td", { class: "num", "data-testid": "group-position" }, num(g.position)),
          h("td", { class: `num ${g.lag > 0 ? "lagging" : ""}`, "data-testid": "group-lag" }, num(g.lag)),
          h("td", { class: "num", "data-testid": "group-in-flight" }, num(g.in_flight)),
          h("td", { class: "num", "data-testid": "group-parked" }, num(g.parked)),
          h("td", { class: "num" }, num(g.delivered)),
          h("td", { class: "num", "data-testid": "group-acked" }, num(g.acked)),
          h("td", { class: "num" }, num(g.workers.length))));
      }
      replace(holder, h("table", { class: "table", "data-testid": "groups-table" },
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: numeric.has(c) ? "num" : null }, c)))),
        body));
    } catch (err) {
      errors.show(err);
    }
  });
}

/* One consumer group: settings, progress, workers, parked events with replay. */
async function pageGroup(view, page) {
  const name = page.route.segments.slice(1).join("/");
  const errors = errorSlot();
  const summary = h("div", { class: "stats compact" });
  const settings = h("div");
  const workers = h("div");
  const parked = h("div");
  const replay = h("button", { type: "button", "data-testid": "group-replay", disabled: true }, "Replay parked events");
  replay.addEventListener("click", async () => {
    replay.disabled = true;
    try {
      const answer = await page.api(path`/subscriptions/${name}/parked/replay`, { method: "POST" });
      flash(`${num(answer.replayed)} parked events are back for delivery`);
    } catch (err) {
      errors.show(err);
    }
  });
  view.append(
    h("div", { class: "crumbs" }, h("a", { href: "#/groups" }, "Consumer groups")),
    h("div", { class: "page-head" }, h("h1", {}, name), h("div", { class: "push" }, replay)),
    errors.el, summary, section("Settings", settings), section("Workers", workers), section("Parked events", parked));
  page.every(2000, async () => {
    try {
      const [g, parkedPage] = await Promise.all([
        page.api(path`/subscriptions/${name}`),
        page.api(path`/subscriptions/${name}/parked?limit=50`),
      ]);
      if (!page.alive) return;
      errors.clear();
      replace(summary,
        stat("Position", h("div", { class: "stat-value", "data-testid": "group-position" }, num(g.position)), h("div", { class: "muted small" }, "every event before it is settled")),
        stat("Lag", h("div", { class: "stat-value", "data-testid": "group-lag" }, num(g.lag))),
        stat("In flight", h("div", { class: "stat-value", "data-testid": "group-in-flight" }, num(g.in_flight))),
        stat("Parked", h("div", { class: "stat-value", "data-testid": "group-parked" }, num(g.parked))),
        stat("Delivered", h("div", { class: "stat-value", "data-testid": "group-delivered" }, num(g.delivered))),
        stat("Acked", h("div", { class: "stat-value", "data-testid": "group-acked" }, num(g.acked))));
      replace(settings, h("dl", { class: "facts", "data-testid": "group-settings" },
        h("dt", {}, "Source"), h("dd", {}, groupSource(g.source)),
        h("dt", {}, "Types"), h("dd", {}, g.types ? g.types.join(", ") : "all"),
        h("dt", {}, "Started from"), h("dd", {}, String(g.from)),
        h("dt", {}, "Ordering"), h("dd", {}, g.ordering === "stream" ? "per stream, one event at a time" : "none"),
        h("dt", {}, "Ack timeout"), h("dd", {}, `${num(g.ack_timeout_ms)} ms`),
        h("dt", {}, "Max deliveries"), h("dd", {}, num(g.max_deliveries))));
      const workerRows = g.workers.map((w) => h("tr", { "data-testid": "worker-row", "data-name": w.worker },
        h("td", {}, w.worker),
        h("td", { class: "num" }, num(w.delivered)),
        h("td", { class: "num" }, num(w.acked)),
        h("td", { class: "num" }, num(w.nacked)),
        h("td", { class: "num" }, num(w.in_flight)),
        h("td", { class: "small" }, w.idle_ms === null ? "—" : ago(w.idle_ms))));
      replace(workers, workerRows.length
        ? h("table", { class: "table", "data-testid": "workers-table" },
          h("thead", {}, h("tr", {}, ["Worker", "Delivered", "Acked", "Nacked", "In flight", "Last seen"].map((c) => h("th", { class: c === "Worker" || c === "Last seen" ? null : "num" }, c)))),
          h("tbody", {}, workerRows))
        : h("p", { class: "muted" }, "No worker has polled since the server started."));
      replay.disabled = parkedPage.parked.length === 0;
      replace(parked, parkedPage.parked.length
        ? h("table", { class: "table", "data-testid": "parked-table" },
          h("thead", {}, h("tr", {}, ["Position", "Stream", "Type", "Deliveries", "Reason", "Data"].map((c) => h("th", {}, c)))),
          h("tbody", {}, parkedPage.parked.map((p) => h("tr", { "data-testid": "parked-row", "data-position": p.event.position },
            h("td", { class: "num" }, num(p.event.position)),
            h("td", {}, h("a", { href: link(["streams", p.event.stream]) }, p.event.stream)),
            h("td", {}, p.event.type),
            h("td", { class: "num" }, num(p.deliveries)),
            h("td", { class: "small" }, p.reason),
            h("td", {}, jsonDetails(p.event.data, "parked-data"))))))
        : h("p", { class: "muted" }, "Nothing is parked."));
    } catch (err) {
      errors.show(err);
    }
  });
}

/* One module: status, counters, versions, rebuild, fault, log, dead letters, actions. */
async function pageModule(view, page) {
  const name = page.route.segments.slice(1).join("/");
  const message = h("div", { class: "alert", "data-testid": "module-message", role: "status", hidden: true });
  const say = (text, kind) => {
    message.textContent = text;
    message.className = `alert ${kind}`;
    message.hidden = false;
  };
  const errors = errorSlot();
  const badges = h("span", { class: "badges", "data-testid": "module-badges" });
  const actions = {};
  const actionButton = (action, label, kind, explain) => {
    const button = h("button", { type: "button", class: kind || "", "data-testid": `action-${action}`, title: explain, onclick: () => act(action, label) }, label);
    actions[action] = button;
    return button;
  };
  const toolbar = h("div", { class: "actions" },
    actionButton("pause", "Pause", "", "Stop processing; state stays readable"),
    actionButton("resume", "Resume", "", "Continue processing (a faulted module retries its event)"),
    actionButton("reset", "Reset", "warn", "Drop the state and rebuild from position 0"),
    actionButton("skip", "Skip", "warn", "Step over the event the module faulted at, recorded as a dead letter"),
    h("button", { type: "button", class: "danger", "data-testid": "action-delete", onclick: remove }, "Delete"));
  const overview = h("div", { class: "stats compact", "data-testid": "module-overview" });
  const rebuildHolder = h("div", { "data-testid": "module-rebuild" });
  const faultHolder = h("div", { "data-testid": "module-fault-holder" });
  const versionsHolder = h("div");
  const limitsHolder = h("div");
  const logHolder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const lettersHolder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  view.append(
    h("div", { class: "crumbs" }, h("a", { href: "#/modules" }, "Modules")),
    h("div", { class: "page-head" }, h("h1", { "data-testid": "module-name" }, name), badges, toolbar),
    message, errors.el, overview, rebuildHolder, faultHolder,
    section("Versions", versionsHolder),
    section("Dead letters", lettersHolder),
    section("Log (stdout and stderr, most recent last)", logHolder),
    section("Limits", limitsHolder));

  async function refresh() {
    const [details, logs, letters] = await Promise.allSettled([
      page.api(path`/projections/${name}`),
      page.api(withQuery(path`/projections/${name}/logs`, { limit: 200 })),
      page.api(withQuery(path`/projections/${name}/dead-letters`, { limit: 100 })),
    ]);
    if (!page.alive) return;
    if (details.status === "rejected") {
      errors.show(details.reason);
      return;
    }
    errors.clear();
    showDetails(details.value);
    if (logs.status === "fulfilled") showLog(logs.value);
    else replace(logHolder, errorBox(logs.reason, "module-log-error"));
    if (letters.status === "fulfilled") showLetters(letters.value);
    else replace(lettersHolder, errorBox(letters.reason, "dead-letters-error"));
  }

  function showDetails(m) {
    view.dataset.status = m.status;
    replace(badges, h("span", { "data-testid": "module-status" }, statusBadge(m.status)), kindBadge(m.kind));
    actions.reset.disabled = false;
    actions.pause.disabled = m.status === "paused";
    actions.resume.disabled = m.status === "running" || m.status === "rebuilding";
    actions.skip.disabled = m.status !== "faulted";
    const counters = m.counters || {};
    replace(overview,
      stat("Version", h("div", { class: "stat-value mono small-value", title: m.version, "data-testid": "module-version" }, shortVersion(m.version)), h("div", { class: "stat-note" }, versionsNote(m.versions || []))),
      stat("Position", h("div", { class: "stat-value", "data-testid": "module-position" }, num(m.position)), h("div", { class: "stat-note" }, "checkpoint")),
      stat("Log head", h("div", { class: "stat-value" }, num(m.head))),
      stat("Lag", h("div", { class: `stat-value ${m.lag > 0 ? "lagging" : ""}`, "data-testid": "module-lag" }, num(m.lag)), h("div", { class: "stat-note" }, "events behind")),
      stat("Events processed", h("div", { class: "stat-value", "data-testid": "module-events" }, num(counters.events_processed)), h("div", { class: "stat-note" }, `${num(counters.batches)} batches · ${num(counters.busy_ms)} ms busy`)),
      stat("Dead letters", h("div", { class: "stat-value", "data-testid": "module-dead-letters" }, num(counters.dead_letters))),
      ...(counters.emitted === undefined ? [] : [
        stat("Emitted", h("div", { class: "stat-value", "data-testid": "module-emitted" }, num(counters.emitted)), h("div", { class: "stat-note" }, "events appended")),
      ]),
      stat("Deployed", h("div", { class: "stat-value small-value", title: m.deployed_at }, m.deployed_at ? ago(Date.now() - Date.parse(m.deployed_at)) : "—"), h("div", { class: "stat-note" }, `${bytes(m.size_bytes)} component`)));

    const current = (m.versions || []).find((v) => v.role === "current");
    const rebuilds = [];
    if (m.status === "rebuilding" && current && current.progress) rebuilds.push(rebuildProgress(current.progress, `rebuilding version ${shortVersion(current.version)}`));
    if (m.rebuild && m.rebuild.progress) rebuilds.push(rebuildProgress(m.rebuild.progress, `new version ${shortVersion(m.rebuild.version)} rebuilding beside the current one (${m.rebuild.status})`));
    replace(rebuildHolder, rebuilds.length ? section("Rebuild", ...rebuilds) : "");

    replace(faultHolder, m.fault ? faultPanel(m.fault) : "");
    replace(versionsHolder, versionsTable(m));
    replace(limitsHolder, limitsTable(m));
  }

  function faultPanel(fault) {
    return h("section", { class: "panel fault", "data-testid": "fault" },
      h("h2", {}, "Faulted"),
      h("p", { class: "small" }, "The module stopped at this event. ",
        h("strong", {}, "Resume"), " retries it, ", h("strong", {}, "Skip"), " steps over it (recorded as a dead letter), ",
        h("strong", {}, "Reset"), " rebuilds from position 0."),
      h("dl", { class: "facts" },
        h("dt", {}, "Position"), h("dd", { "data-testid": "fault-position" }, h("a", { href: link(["all"], { from: fault.position, limit: 10 }) }, String(fault.position))),
        h("dt", {}, "Event id"), h("dd", { class: "mono", "data-testid": "fault-event-id" }, fault.event_id || "—"),
        h("dt", {}, "Event type"), h("dd", { "data-testid": "fault-event-type" }, fault.event_type || "—"),
        h("dt", {}, "Stream"), h("dd", { "data-testid": "fault-stream" }, fault.stream ? h("a", { href: link(["streams", fault.stream]) }, fault.stream) : "—"),
        h("dt", {}, "Kind"), h("dd", { "data-testid": "fault-kind" }, fault.kind || "—"),
        h("dt", {}, "At"), h("dd", {}, timeCell(fault.at))),
      h("div", { class: "label" }, "Guest message"),
      h("pre", { class: "fault-message", "data-testid": "fault-message" }, fault.message || ""),
      fault.log_tail && fault.log_tail.length
        ? [h("div", { class: "label" }, "Log tail"), logLines(fault.log_tail, "fault-log")]
        : null);
  }

  function versionsTable(m) {
    const body = h("tbody");
    for (const v of m.versions || []) {
      const canActivate = v.role === "candidate" || v.role === "kept";
      body.append(h("tr", { "data-testid": "version-row", "data-version": v.version, "data-role": v.role },
        h("td", { class: "mono", title: v.version }, shortVersion(v.version)),
        h("td", {}, h("span", { class: `badge role-${v.role}` }, v.role)),
        h("td", {}, statusBadge(v.status)),
        h("td", { class: "num" }, num(v.position)),
        h("td", { class: "num" }, num(v.lag)),
        h("td", { class: "nowrap small" }, timeCell(v.deployed_at)),
        h("td", { class: "progress-cell" }, v.progress && (v.status === "rebuilding" || v.role === "candidate") ? rebuildProgress(v.progress) : ""),
        h("td", {}, canActivate ? h("button", { type: "button", "data-testid": "version-activate", onclick: () => activate(v) }, v.role === "kept" ? "Roll back" : "Activate") : "")));
    }
    return h("table", { class: "table", "data-testid": "versions-table" },
      h("thead", {}, h("tr", {}, ["Version", "Role", "Status", "Position", "Lag", "Deployed", "Progress", ""].map((c) => h("th", { class: c === "Position" || c === "Lag" ? "num" : null }, c)))),
      body);
  }

  function limitsTable(m) {
    const limits = m.limits || {};
    const settings = m.settings || {};
    const rows = [
      ["Memory", bytes(limits.memory_bytes)],
      ["Time per call", limits.call_timeout_ms === undefined ? "—" : `${num(limits.call_timeout_ms)} ms`],
      ["Largest state or value", bytes(limits.max_state_bytes)],
      ["Writes per call", bytes(limits.max_call_write_bytes)],
      ["Kept log", bytes(limits.log_bytes)],
      ["On error", settings.on_error || "halt"],
    ];
    return h("dl", { class: "facts wide" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function showLog(logs) {
    const lines = logs.lines || [];
    replace(logHolder,
      lines.length ? logLines(lines, "module-log") : h("p", { class: "empty", "data-testid": "module-log-empty" }, "The module printed nothing."),
      logs.dropped ? h("p", { class: "muted small" }, `${num(logs.dropped)} older lines were dropped.`) : null);
  }

  function showLetters(listing) {
    const letters = listing.dead_letters || [];
    if (!letters.length) {
      replace(lettersHolder, h("p", { class: "empty", "data-testid": "dead-letters-empty" }, "No event was skipped."));
      return;
    }
    replace(lettersHolder, h("table", { class: "table", "data-testid": "dead-letters" },
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Position"), h("th", {}, "Event"), h("th", {}, "Message"), h("th", {}, "By"))),
      h("tbody", {}, letters.map((d) => h("tr", { "data-testid": "dead-letter", "data-position": d.position },
        h("td", { class: "num" }, h("a", { href: link(["all"], { from: d.position, limit: 10 }) }, num(d.position))),
        h("td", {}, h("div", {}, d.event_type || ""), h("div", { class: "mono small muted" }, d.event_id || ""), d.stream ? h("a", { href: link(["streams", d.stream]), class: "small" }, d.stream) : null),
        h("td", {}, h("pre", { class: "fault-message small" }, d.message || "")),
        h("td", { class: "small" }, d.by || "", h("div", { class: "muted" }, timeCell(d.at))))))),
    listing.next !== null && listing.next !== undefined ? h("p", { class: "muted small" }, "More dead letters exist than are shown.") : null);
  }

  async function act(action, label) {
    const questions = {
      reset: `Reset ${name}? Its state is dropped and rebuilt from position 0.`,
      skip: `Skip the event ${name} stopped at? It will not be applied, and is recorded as a dead letter.`,
    };
    if (questions[action] && !window.confirm(questions[action])) return;
    for (const b of Object.values(actions)) b.disabled = true;
    try {
      const answer = await page.api(path`/projections/${name}/${action}`, { method: "POST" });
      say(`${label}: ${name} is now ${answer.status} (position ${num(answer.position)}, lag ${num(answer.lag)}).`, "ok");
    } catch (err) {
      if (isAbort(err)) return;
      say(describe(err), "error");
    }
    await refresh().catch(() => {});
  }

  async function activate(version) {
    if (!window.confirm(`Make version ${shortVersion(version.version)} of ${name} current?`)) return;
    try {
      const answer = await page.api(path`/projections/${name}/versions/${version.version}/activate`, { method: "POST" });
      say(`Version ${shortVersion(answer.version)} is now current (${answer.status}).`, "ok");
    } catch (err) {
      if (isAbort(err)) return;
      say(describe(err), "error");
    }
    await refresh().catch(() => {});
  }

  async function remove() {
    if (!window.confirm(`Delete ${name}, every version of it and all its state? This cannot be undone.`)) return;
    try {
      await page.api(path`/projections/${name}`, { method: "DELETE" });
      flash(`${name} is deleted.`, "ok");
      go(["modules"]);
    } catch (err) {
      if (!isAbort(err)) say(describe(err), "error");
    }
  }

  page.every(2000, refresh);
}

/** "current only", or "current, 1 candidate, 2 kept". */
function versionsNote(versions) {
  const counts = {};
  for (const v of versions) if (v.role !== "current") counts[v.role] = (counts[v.role] || 0) + 1;
  const others = Object.entries(counts).map(([role, n]) => `${n} ${role}`);
  return others.length ? `current, ${others.join(", ")}` : "current only";
}

function logLines(lines, testid) {
  return h("pre", { class: "log", "data-testid": testid },
    lines.map((l) => h("span", { class: `log-line ${l.source === "stderr" ? "stderr" : "stdout"}` }, `${l.line}\n`)));
}

/* State: a reducer's state of one stream (now or in the past), a projection's keys. */
async function pageState(view, page) {
  const q = page.route.query;
  const errors = errorSlot();
  const moduleSelect = h("select", { "data-testid": "state-module" });
  const form = h("form", { class: "filters", "data-testid": "state-form" }, field("Module", moduleSelect));
  const result = h("div", { "data-testid": "state-result" });
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "State"), h("span", { class: "muted small", "data-testid": "state-kind" })),
    form, errors.el, result);
  let modules;
  try {
    modules = (await page.api("/projections")).projections;
  } catch (err) {
    errors.show(err);
    return;
  }
  if (!modules.length) {
    result.append(h("p", { class: "empty" }, "No module is deployed. ", h("a", { href: "#/deploy" }, "Deploy one"), "."));
    return;
  }
  const chosen = modules.find((m) => m.name === q.get("module")) || modules[0];
  for (const m of modules) moduleSelect.append(h("option", { value: m.name, selected: m === chosen }, `${m.name} (${m.kind})`));
  moduleSelect.addEventListener("change", () => go(["state"], { module: moduleSelect.value }));
  view.querySelector("[data-testid=state-kind]").textContent = chosen.kind === "reducer"
    ? "a reducer: one state per stream"
    : "a projection: one read model of keys and values";
  if (chosen.kind === "reducer") await reducerState(page, chosen, form, result, errors);
  else await projectionState(page, chosen, form, result, errors);
}

async function reducerState(page, module, form, result, errors) {
  const q = page.route.query;
  const stream = q.get("stream") || "";
  const revision = q.get("revision") || "";
  const at = q.get("at") || "";
  const streamInput = h("input", { type: "search", value: stream, placeholder: "e.g. account-1", list: "state-streams", "data-testid": "state-stream", spellcheck: "false", required: true });
  const revisionInput = h("input", { type: "number", min: 0, value: revision, class: "narrow", placeholder: "latest", "data-testid": "state-revision" });
  const atInput = h("input", { type: "text", value: at, placeholder: "2026-01-01T12:00:00Z", "data-testid": "state-at", spellcheck: "false" });
  const suggestions = h("datalist", { id: "state-streams" });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go(["state"], { module: module.name, stream: streamInput.value.trim(), revision: revisionInput.value, at: atInput.value.trim() });
  });
  form.append(
    field("Stream", streamInput),
    field("At revision", revisionInput, "optional: time travel"),
    field("Or at time", atInput, "optional, RFC 3339"),
    h("button", { type: "submit", class: "primary", "data-testid": "state-submit" }, "Show state"),
    suggestions);
  page.api(withQuery("/streams", { limit: 500 })).then((listing) => {
    for (const s of listing.streams) suggestions.append(h("option", { value: s.stream }));
  }).catch(() => {});
  if (!stream) {
    result.append(h("p", { class: "muted" }, `${module.name} keeps one state per stream: enter a stream name.`));
    return;
  }
  try {
    const answer = await page.api(withQuery(path`/projections/${module.name}/streams/${stream}`, { revision, at }));
    const timeTravel = revision !== "" || at !== "";
    result.append(section(null,
      h("div", { class: "page-head" },
        h("h2", {}, "State of ", h("a", { href: link(["streams", stream]) }, stream)),
        h("span", { class: "muted" }, "at revision ", h("strong", { "data-testid": "state-revision-shown" }, num(answer.revision)), timeTravel ? " (replayed on demand)" : " (latest)"),
        h("span", { class: "links" },
          answer.revision > 0 ? h("a", { href: link(["state"], { module: module.name, stream, revision: answer.revision - 1 }), "data-testid": "state-earlier" }, "‹ revision before") : null,
          timeTravel ? h("a", { href: link(["state"], { module: module.name, stream }) }, "latest") : null)),
      jsonView(answer.state, "state-json")));
  } catch (err) {
    errors.show(err);
  }
}

async function projectionState(page, module, form, result, errors) {
  const q = page.route.query;
  const prefix = q.get("prefix") || "";
  const from = q.get("from") || "";
  const limit = q.get("limit") || "50";
  const prefixInput = h("input", { type: "search", value: prefix, placeholder: "all keys", "data-testid": "state-prefix", spellcheck: "false" });
  const groups = h("div", { class: "chips", "data-testid": "state-groups" });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go(["state"], { module: module.name, prefix: prefixInput.value });
  });
  form.append(
    field("Key prefix", prefixInput),
    h("button", { type: "submit", class: "primary", "data-testid": "state-submit" }, "List keys"),
    groups);
  fillKeyGroups(page, module.name, prefix, groups);
  try {
    const listing = await page.api(withQuery(path`/projections/${module.name}/state`, { prefix, from, limit }));
    const body = h("tbody");
    if (!listing.items.length) body.append(h("tr", {}, h("td", { colspan: 2, class: "empty" }, prefix ? `No key starts with “${prefix}”.` : "The read model is empty.")));
    for (const item of listing.items) {
      body.append(h("tr", { "data-testid": "state-item", "data-key": item.key },
        h("td", { class: "mono key-cell", "data-testid": "state-key" }, item.key),
        h("td", {}, jsonView(item.value, "state-value", "compact"))));
    }
    const nextTarget = listing.next === null || listing.next === undefined ? null : link(["state"], { module: module.name, prefix, limit, from: listing.next });
    result.append(section(null,
      h("table", { class: "table", "data-testid": "state-items" },
        h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", {}, "Value"))),
        body),
      pager(
        pageButton("« First", "state-first", link(["state"], { module: module.name, prefix, limit }), from !== ""),
        pageButton("Next ›", "state-next", nextTarget),
        h("span", { class: "muted small", "data-testid": "state-count" }, `${listing.items.length} key${listing.items.length === 1 ? "" : "s"}${from ? ` from “${from}”` : ""}`))));
  } catch (err) {
    errors.show(err);
  }
}

/**
 * The key groups of a read model (`customer/`, `order/`, ...) as links, found by hopping over
 * each group: the first key from `group/<max>` on starts the next one. At most 50 requests.
 */
async function fillKeyGroups(page, name, prefix, holder) {
  const found = [];
  let from = "";
  for (let i = 0; i < 50; i++) {
    const listing = await page.api(withQuery(path`/projections/${name}/state`, { from, limit: 1 })).catch(() => null);
    if (!listing || !listing.items.length || !page.alive) break;
    const key = listing.items[0].key;
    const slash = key.indexOf("/");
    if (slash < 0) break;
    const group = key.slice(0, slash + 1);
    found.push(group);
    from = `${group}${"\u{10FFFF}".repeat(4)}`;
  }
  if (!page.alive || !found.length) return;
  replace(holder, h("span", { class: "field-label" }, "Key groups"),
    found.map((group) => h("a", { class: `chip ${group === prefix ? "selected" : ""}`, href: link(["state"], { module: name, prefix: group }), "data-testid": "state-group" }, group)));
}

/* Deploy: upload a component's bytes under a name. */
async function pageDeploy(view) {
  const nameInput = h("input", { type: "text", placeholder: "e.g. bank-account", "data-testid": "deploy-name", spellcheck: "false", required: true });
  const fileInput = h("input", { type: "file", accept: ".wasm,application/wasm", "data-testid": "deploy-file", required: true });
  const manual = h("input", { type: "checkbox", "data-testid": "deploy-manual" });
  const onError = h("select", { "data-testid": "deploy-on-error" },
    h("option", { value: "" }, "halt (default): fault and wait for an operator"),
    h("option", { value: "skip" }, "skip: record failing events as dead letters"));
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "deploy-submit" }, "Deploy");
  const result = h("div", { "data-testid": "deploy-result-holder" });
  fileInput.addEventListener("change", () => {
    const file = fileInput.files[0];
    if (file && !nameInput.value) nameInput.value = file.name.replace(/\.wasm$/i, "").toLowerCase().replace(/[^a-z0-9_-]+/g, "-").replace(/^[^a-z0-9]+/, "").slice(0, 64);
  });
  const form = h("form", { class: "panel deploy-form", "data-testid": "deploy-form", onsubmit: async (e) => {
    e.preventDefault();
    const name = nameInput.value.trim();
    const file = fileInput.files[0];
    if (!name || !file) {
      replace(result, h("div", { class: "alert error", "data-testid": "deploy-error" }, "Choose a file and a module name."));
      return;
    }
    submit.disabled = true;
    replace(result, h("p", { class: "muted", "data-testid": "deploy-pending" }, `Uploading ${file.name} (${bytes(file.size)})… compiling can take a while.`));
    try {
      const answer = await request(withQuery(path`/projections/${name}`, { activate: manual.checked ? "manual" : "", on_error: onError.value }), {
        method: "PUT",
        body: file,
        headers: { "Content-Type": "application/wasm" },
      });
      const m = answer.body;
      const headline = answer.status === 201
        ? m.current ? `Deployed ${m.name}.` : `Deployed a new version of ${m.name}: it rebuilds beside the current one.`
        : `${m.name} already runs these bytes: nothing changed.`;
      replace(result, h("div", { class: "alert ok", "data-testid": "deploy-result", "data-status": answer.status },
        h("strong", {}, headline),
        h("dl", { class: "facts" },
          h("dt", {}, "Version"), h("dd", { class: "mono", "data-testid": "deploy-version" }, m.version),
          h("dt", {}, "Kind"), h("dd", {}, m.kind),
          h("dt", {}, "Status"), h("dd", {}, statusBadge(m.status)),
          h("dt", {}, "HTTP"), h("dd", {}, String(answer.status))),
        h("a", { href: link(["modules", m.name]), "data-testid": "deploy-open" }, `Open ${m.name} →`)));
    } catch (err) {
      replace(result, h("div", { class: "alert error", "data-testid": "deploy-error" },
        h("strong", {}, "The server refused the module. "), describe(err)));
    } finally {
      submit.disabled = false;
    }
  } },
  field("Module name", nameInput, "1 to 64 characters: a-z, 0-9, - and _"),
  field("Component (.wasm)", fileInput),
  field("When rebuilt", h("span", { class: "inline" }, manual, " wait for manual activation (new version of an existing module)")),
  field("On error", onError),
  h("div", { class: "buttons" }, submit));
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Deploy a module")),
    h("p", { class: "muted" }, "Upload a WebAssembly component built against Refold's WIT worlds (reducer or projection). ",
      "A new module processes the log from position 0; new bytes for an existing name rebuild beside the current version, which keeps serving until the new one has caught up."),
    form, result);
}

/* ------------------------------------------------------------------ start */

function start() {
  setUpLogin();
  window.addEventListener("hashchange", render);
  render();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
