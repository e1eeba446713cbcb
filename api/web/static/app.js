// clipfit's web page: a client of the public API, like the Python client and curl.
// No framework and no build step. Everything the server sends is shown with textContent
// (never parsed as markup), and the API key lives in this tab's sessionStorage only.
"use strict";

const KEY = "clipfit.key";
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const FORM_BASE = new Set(["images", "labels", "dataset", "classes", "base_model", "name",
  "parent_adapter_id", "dataset_id"]);
const MAIN_FIELDS = ["epochs", "template"];  // shown at once; the rest under "Advanced"
const view = document.getElementById("view");
let cleanups = [];  // what leaving the current view must stop (streams, timers, object URLs)
let catalog = null;  // GET /v1/models: base models, templates, limits
let formSchema = null;  // the job form's JSON schema, from /openapi.json
let captureSchema = null;  // the capture settings' JSON schema, from /openapi.json
let retrainSchema = null;  // a retrain's JSON body schema, from /openapi.json
let routeSignal = null;  // aborted when the user leaves the view: its requests stop with it

// ---------------------------------------------------------------- small helpers

function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;  // CSSOM: allowed by the page's CSP
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const enc = encodeURIComponent;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`);

function bytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function ago(iso) {
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

function randomKey() {  // crypto.randomUUID needs a secure context; plain http may not be one
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status, text: status });
}

function sentence(text) {
  const t = String(text || "").trim();
  return t ? t[0].toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".") : "";
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message, problems = []) {
    super(message);
    this.status = status;
    this.problems = problems;
  }
}

function authHeaders(extra = {}) {
  return { ...extra, Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` };
}

function errorFrom(status, body, retryAfter) {
  const detail = body && body.detail;
  let message = `the server answered ${status}`;
  let problems = [];
  if (detail && typeof detail === "object") {
    message = detail.message || message;
    problems = Array.isArray(detail.problems) ? detail.problems.map(String) : [];
  } else if (typeof detail === "string") {
    message = detail;
  }
  if ((status === 429 || status === 503) && retryAfter) {
    message += ` (try again in ${retryAfter} s)`;
  }
  if (status === 401) signOut(sentence(message));
  const error = new ApiError(status, message, problems);
  error.retryAfter = Number(retryAfter) || 0;
  return error;
}

async function responseError(r) {
  let body = null;
  try { body = await r.json(); } catch { /* not JSON: a proxy's page */ }
  return errorFrom(r.status, body, r.headers.get("Retry-After"));
}

async function api(path, { method = "GET", body, json, headers = {}, signal = routeSignal,
  raw = false } = {}) {
  if (json !== undefined) {
    body = JSON.stringify(json);
    headers = { ...headers, "Content-Type": "application/json" };
  }
  let r;
  try {
    r = await fetch(path, { method, body, signal, headers: authHeaders(headers) });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "the service cannot be reached; check the connection and retry");
  }
  if (!r.ok) throw await responseError(r);
  if (raw) return r;
  return r.status === 204 ? null : r.json();
}

// fetch cannot report upload progress; XMLHttpRequest can, and uploads can be large.
function upload(path, form, headers, onProgress, signal) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    signal?.addEventListener("abort", () => {
      xhr.abort();
      reject(new DOMException("left the page", "AbortError"));
    });
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(authHeaders(headers))) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, "the upload was interrupted; retry"));
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(errorFrom(xhr.status, body, xhr.getResponseHeader("Retry-After")));
    };
    xhr.send(form);
  });
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header).
// Reconnects with Last-Event-ID after a failure or an early end (a restarted server); returns
// once the job has finished (``finished()``) and the server has ended the stream. Events are
// handled one at a time, in order.
async function followEvents(jobId, onEvent, signal, onTrouble, finished) {
  let last = 0;
  let delay = 1000;
  while (!signal.aborted) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (last) headers["Last-Event-ID"] = String(last);
      const r = await fetch(`/v1/jobs/${enc(jobId)}/events?stream=true`, { headers, signal });
      if (!r.ok) throw await responseError(r);
      onTrouble(null);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          if (finished()) return;
          throw new Error("the stream ended early");
        }
        let text = buf + value;
        const hold = text.endsWith("\r") ? "\r" : "";  // a CRLF split across two chunks
        if (hold) text = text.slice(0, -1);
        buf = text.replace(/\r\n?/g, "\n") + hold;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).replace(/^ /, ""));
          if (!data.length) continue;  // a keep-alive comment
          const event = JSON.parse(data.join("\n"));
          last = event.id;
          delay = 1000;
          await onEvent(event);
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 429) throw e;
      onTrouble(`Live updates interrupted; reconnecting in ${delay / 1000} s…`);
      await sleep(delay);
      delay = Math.min(delay * 2, 15000);
    }
  }
}

async function loadCatalog() {
  if (!catalog) catalog = await api("/v1/models");
  if (!formSchema || !captureSchema || !retrainSchema) {
    const openapi = await api("/openapi.json");
    const named = (schema) => {  // a $ref, or anyOf [$ref, null] for an optional body
      const ref = (schema.anyOf || [schema]).find((s) => s.$ref).$ref;
      return openapi.components.schemas[ref.split("/").pop()];
    };
    const post = openapi.paths["/v1/jobs"].post;
    formSchema = post.requestBody.content["multipart/form-data"].schema;
    const put = openapi.paths["/v1/adapters/{adapter_id}/capture"].put;
    captureSchema = named(put.requestBody.content["application/json"].schema);
    const retrain = openapi.paths["/v1/adapters/{adapter_id}/retrain"].post;
    retrainSchema = named(retrain.requestBody.content["application/json"].schema);
  }
  return catalog;
}

// ---------------------------------------------------------------- shell and routing

function notice(message) {
  const el = document.getElementById("notice");
  el.textContent = message || "";
  el.hidden = !message;
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  catalog = formSchema = captureSchema = retrainSchema = null;
  if (message) sessionStorage.setItem("clipfit.signin-message", message);
  if (location.hash !== "#/signin") location.hash = "#/signin";
  else route();
}

function errorView(e) {
  const box = h("div", { class: "error-box" }, h("b", { text: sentence(e.message) }));
  if (e.problems && e.problems.length) {
    box.append(h("ul", { class: "problems" }, e.problems.map((p) => h("li", { text: p }))));
  }
  return box;
}

function show(...nodes) {
  view.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));  // optional cards
}

const ROUTES = [
  [/^#\/new$/, "new", viewNew],
  [/^#\/jobs$/, "jobs", viewJobs],
  [/^#\/jobs\/([\w-]+)$/, "jobs", viewJob],
  [/^#\/adapters$/, "adapters", viewAdapters],
  [/^#\/adapters\/([\w-]+)$/, "adapters", viewAdapter],
  [/^#\/adapters\/([\w-]+)\/review$/, "adapters", viewReview],
  [/^#\/try(?:\?adapter=([\w-]+))?$/, "try", viewTry],
  [/^#\/predict$/, "predict", viewPredict],
];

async function route() {
  for (const stop of cleanups.splice(0)) stop();
  const leaving = new AbortController();
  routeSignal = leaving.signal;
  cleanups.push(() => leaving.abort());
  notice(null);
  const signedIn = Boolean(sessionStorage.getItem(KEY));
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  if (!signedIn) return viewSignIn();
  const hash = location.hash && location.hash !== "#/signin" ? location.hash : "#/jobs";
  const match = ROUTES.map(([re, name, fn]) => [hash.match(re), name, fn]).find(([m]) => m);
  if (!match) { location.hash = "#/jobs"; return undefined; }
  const [m, name, fn] = match;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === name);
  }
  show(h("p", { class: "sub", text: "Loading…" }));
  try {
    await fn(...m.slice(1));
  } catch (e) {
    if (e.name === "AbortError") return undefined;
    if (e.status === 401) return undefined;  // signOut has taken over
    show(errorView(e));
  }
  return undefined;
}

// ---------------------------------------------------------------- sign in

function viewSignIn() {
  const message = sessionStorage.getItem("clipfit.signin-message");
  sessionStorage.removeItem("clipfit.signin-message");
  const input = h("input", { type: "password", id: "api-key", name: "api-key",
    autocomplete: "new-password", placeholder: "cfk_…", required: true, spellcheck: false });
  const status = h("div");
  if (message) status.append(errorView(new ApiError(401, message)));
  const form = h("form", { class: "card signin", onsubmit: async (e) => {
    e.preventDefault();
    if (!/^[\x21-\x7e]+$/.test(input.value.trim())) {
      status.replaceChildren(errorView(new ApiError(0, "an API key is printable ASCII with no "
        + "spaces (it starts with cfk_)")));
      return;
    }
    sessionStorage.setItem(KEY, input.value.trim());
    status.replaceChildren(h("p", { class: "sub", text: "Checking the key…" }));
    try {
      await loadCatalog();
    } catch (err) {
      sessionStorage.removeItem(KEY);
      catalog = formSchema = captureSchema = retrainSchema = null;
      status.replaceChildren(errorView(err.status === 403
        ? new ApiError(403, "this key cannot read jobs and adapters; use a key with the read scope")
        : err));
      return;
    }
    location.hash = "#/jobs";
    route();
  } },
  h("h1", { text: "Sign in" }),
  h("p", { text: "Paste an API key. The page keeps it in this tab only, until you sign out "
    + "or close the tab." }),
  h("label", { for: "api-key", text: "API key" }), input,
  h("div", { class: "row", style: "margin-top:1rem" },
    h("button", { type: "submit", text: "Sign in" })),
  status);
  show(form);
  input.focus();
}

// ---------------------------------------------------------------- new job

// The server's reading rules (clipfit_core/data.py), applied to a list of relative paths so
// that the preview shows what will be trained: hidden entries and __MACOSX are skipped;
// sub-folders, images and manifest.csv count; a root holding one folder of folders (or of
// a manifest) is read inside it; each folder is a class ("a_b" is "a b"), its images at any
// depth below it are the class's; images beside the class folders make the upload refused.
const IMAGE_SUFFIXES = [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"];
const MANIFEST = "manifest.csv";

function isImage(name) {
  return IMAGE_SUFFIXES.some((s) => name.toLowerCase().endsWith(s));
}

function readTree(pairs) {  // pairs: [file or null, "relative/path/name"]
  const root = { dirs: new Map(), files: new Map() };
  let skipped = 0;
  for (const [file, path] of pairs) {
    const parts = path.split("/").filter(Boolean);
    if (!parts.length || parts.some((p) => p.startsWith(".") || p === "__MACOSX")) continue;
    let node = root;
    for (const part of parts.slice(0, -1)) {
      if (!node.dirs.has(part)) node.dirs.set(part, { dirs: new Map(), files: new Map() });
      node = node.dirs.get(part);
    }
    const name = parts[parts.length - 1];
    if (isImage(name) || name === MANIFEST) node.files.set(name, { file, path: parts.join("/") });
    else skipped += 1;
  }
  let top = root;
  if (root.dirs.size === 1 && root.files.size === 0) {
    const [only] = root.dirs.values();
    if (only.files.has(MANIFEST) || (only.dirs.size && !only.files.size)) top = only;
  }
  if (top.files.has(MANIFEST)) return { items: [], loose: [], manifest: true, skipped };
  const items = [];
  const walk = (node, cls) => {
    for (const [, entry] of [...node.files].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (entry.path.split("/").pop() !== MANIFEST) items.push({ ...entry, cls });
    }
    for (const [, child] of [...node.dirs].sort(([a], [b]) => (a < b ? -1 : 1))) walk(child, cls);
  };
  for (const [name, dir] of [...top.dirs].sort(([a], [b]) => (a < b ? -1 : 1))) {
    walk(dir, name.replaceAll("_", " "));
  }
  const loose = [...top.files.values()].map((e) => e.path);
  return { items, loose, manifest: false, skipped };
}

// A chosen folder: paths start with the folder's own name, which is the root.
function fromFolder(pairs) {
  const inside = pairs.map(([file, full]) => [file, full.split("/").slice(1).join("/")]);
  return { kind: "folder", ...readTree(inside) };
}

async function zipNames(file) {
  // the central directory at the end of the archive names every member: nothing is
  // decompressed here (the server checks the archive itself)
  const tailLength = Math.min(file.size, 65557);
  const tail = new DataView(await file.slice(file.size - tailLength).arrayBuffer());
  let end = -1;
  for (let i = tailLength - 22; i >= 0; i--) {
    if (tail.getUint32(i, true) === 0x06054b50) { end = i; break; }
  }
  if (end < 0) throw new Error("this file is not a zip archive");
  const count = tail.getUint16(end + 10, true);
  const size = tail.getUint32(end + 12, true);
  const offset = tail.getUint32(end + 16, true);
  if (offset + size > file.size) throw new Error("this zip archive's directory is damaged");
  const dir = new DataView(await file.slice(offset, offset + size).arrayBuffer());
  const names = [];
  const decoder = new TextDecoder();
  let p = 0;
  for (let n = 0; n < count && p + 46 <= dir.byteLength; n++) {
    if (dir.getUint32(p, true) !== 0x02014b50) break;
    const nameLength = dir.getUint16(p + 28, true);
    const skip = dir.getUint16(p + 30, true) + dir.getUint16(p + 32, true);
    names.push(decoder.decode(new Uint8Array(dir.buffer, dir.byteOffset + p + 46, nameLength)));
    p += 46 + nameLength + skip;
  }
  return names;
}

async function fromZip(file) {
  const names = (await zipNames(file)).filter((n) => !n.endsWith("/"));
  return { kind: "zip", file, ...readTree(names.map((n) => [null, n])) };
}

async function readEntries(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    out.push([file, `${prefix}${entry.name}`]);
    return;
  }
  const reader = entry.createReader();
  for (;;) {  // readEntries answers in pieces of at most 100
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) return;
    for (const child of batch) await readEntries(child, `${prefix}${entry.name}/`, out);
  }
}

async function fromDrop(dataTransfer) {
  const entries = Array.from(dataTransfer.items || [])
    .map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null)).filter(Boolean);
  const files = Array.from(dataTransfer.files || []);
  if (files.length === 1 && /\.zip$/i.test(files[0].name) && entries.every((e) => e.isFile)) {
    return fromZip(files[0]);
  }
  const folders = entries.filter((e) => e.isDirectory);
  if (!folders.length) {
    throw new Error("drop one folder (with a folder per class inside), the class folders "
      + "themselves, or a zip");
  }
  const pairs = [];
  // one folder dropped: it is the root; several: each one is a class folder
  const prefix = folders.length === 1 ? "" : "dropped/";
  for (const entry of folders) await readEntries(entry, prefix, pairs);
  return fromFolder(pairs);
}

function numberField(key, prop, limits) {
  const max = key === "epochs" && limits ? Math.min(prop.maximum ?? Infinity, limits.max_epochs)
    : prop.maximum;
  const variants = prop.anyOf || [];
  const type = prop.type ?? variants.map((t) => t.type).find((t) => t !== "string");
  const input = h("input", { type: "number", id: `hp-${key}`, name: key,
    value: prop.default, min: prop.minimum ?? prop.exclusiveMinimum, max,
    step: type === "integer" ? "1" : "any", required: true });
  // epochs, lr and batch_size also take "auto": the service picks them (README's rule)
  const auto = variants.some((t) => t.const === "auto" || (t.enum || []).includes("auto"))
    ? h("label", { class: "choice auto" }, h("input", { type: "checkbox", id: `hp-${key}-auto`,
      name: key, value: "auto", onchange: (e) => { input.disabled = e.target.checked; } }),
    "auto") : null;
  const low = prop.minimum !== undefined ? `${prop.minimum}`
    : prop.exclusiveMinimum !== undefined ? `above ${prop.exclusiveMinimum}` : null;
  const range = low !== null && max !== undefined ? ` (${low} to ${max})`
    : low !== null ? ` (${low} or more)` : max !== undefined ? ` (at most ${max})` : "";
  return h("div", {}, h("label", { for: input.id }, key,
    h("span", { class: "hint", text: `${prop.description || ""}${range}` })), input, auto);
}

function templateField(prop, templates) {
  const list = h("datalist", { id: "template-names" },
    templates.map((t) => h("option", { value: t })));
  const input = h("input", { type: "text", id: "hp-template", name: "template",
    value: prop.default ?? "default", list: "template-names", maxlength: 300 });
  return h("div", {}, h("label", { for: input.id }, "template",
    h("span", { class: "hint", text: "a name from the list, or a sentence with {} for the "
      + "class name" })), input, list);
}

async function viewNew() {
  const cat = await loadCatalog();
  const props = formSchema.properties;
  let picked = null;
  let problemsByPath = new Map();
  let otherProblems = [];
  let sending = false;
  let idempotencyKey = null;  // one per selection: a retried upload cannot make two jobs

  const preview = h("div", { id: "preview" });
  const status = h("div", { id: "submit-status" });
  const dropMessage = h("p", { class: "sub", id: "drop-message",
    text: "Drop a folder that holds one folder per class, or a zip of such folders." });

  function renderPreview() {
    preview.replaceChildren();
    if (!picked) return;
    const classes = new Map();
    for (const item of picked.items) {
      if (!classes.has(item.cls)) classes.set(item.cls, []);
      classes.get(item.cls).push(item);
    }
    const title = picked.kind === "zip" ? `${picked.file.name} (${bytes(picked.file.size)})`
      : `${picked.items.length} images`;
    const card = h("div", { class: "card" }, h("div", { class: "head" },
      h("div", {}, h("h2", { style: "margin:0", text: "What will be sent" }),
        h("p", { class: "sub", text: title })),
      h("button", { type: "button", class: "quiet", text: "Clear", disabled: sending,
        onclick: () => { picked = null; problemsByPath = new Map(); otherProblems = [];
          renderPreview(); status.replaceChildren(); } })));
    if (otherProblems.length) {
      card.append(h("ul", { class: "problems", id: "problems" },
        otherProblems.map((p) => h("li", { text: p }))));
    }
    if (picked.manifest) {
      card.append(h("p", { text: "The zip holds a manifest.csv: the server reads the labels "
        + "from it." }));
    }
    if (picked.loose.length) {
      card.append(h("ul", { class: "problems" }, h("li", { text: `${picked.loose.length} `
        + "image(s) lie beside the class folders, which the service refuses: move them into "
        + `a class folder (${picked.loose.slice(0, 5).join(", ")})` })));
    }
    if (picked.skipped) {
      card.append(h("p", { class: "sub", text: `${picked.skipped} file(s) that are not images `
        + `(${IMAGE_SUFFIXES.join(" ")}) are left out.` }));
    }
    if (classes.size) {
      const rows = [];
      for (const [cls, items] of [...classes].sort(([a], [b]) => a.localeCompare(b))) {
        const bad = items.filter((i) => problemsByPath.has(i.path));
        rows.push(h("tr", { "data-class": cls }, h("td", { text: cls }),
          h("td", { class: "num", text: items.length }),
          h("td", {}, bad.map((i) => h("div", { class: "problem", "data-file": i.path },
            h("b", { text: i.path }), ": ", problemsByPath.get(i.path).join("; "))))));
      }
      card.append(h("table", { id: "classes" },
        h("thead", {}, h("tr", {}, h("th", { text: `${classes.size} classes` }),
          h("th", { class: "num", text: "images" }), h("th", { text: "problems" }))),
        h("tbody", {}, rows)));
    }
    preview.append(card);
  }

  async function take(promise) {
    if (sending) return;
    try {
      picked = await promise;
      idempotencyKey = randomKey();
      problemsByPath = new Map();
      otherProblems = [];
      status.replaceChildren();
      renderPreview();
    } catch (e) {
      picked = null;
      renderPreview();
      status.replaceChildren(errorView(e));
    }
  }

  const folderInput = h("input", { type: "file", id: "folder-input", webkitdirectory: true,
    multiple: true, onchange: (e) => take(Promise.resolve(fromFolder(
      Array.from(e.target.files, (f) => [f, f.webkitRelativePath || f.name])))) });
  const zipInput = h("input", { type: "file", id: "zip-input", accept: ".zip,application/zip",
    onchange: (e) => e.target.files[0] && take(fromZip(e.target.files[0])) });
  const drop = h("div", { class: "drop", id: "drop",
    ondragover: (e) => { e.preventDefault(); drop.classList.add("over"); },
    ondragleave: () => drop.classList.remove("over"),
    ondrop: (e) => { e.preventDefault(); drop.classList.remove("over");
      take(fromDrop(e.dataTransfer)); } },
  dropMessage,
  h("div", { class: "row" },
    h("button", { type: "button", class: "quiet", text: "Choose a folder…",
      onclick: () => folderInput.click() }),
    h("button", { type: "button", class: "quiet", text: "Choose a zip…",
      onclick: () => zipInput.click() })),
  folderInput, zipInput);

  const modelSelect = h("select", { id: "base-model", name: "base_model" },
    cat.data.map((m) => h("option", { value: m.id, selected: m.default,
      text: m.default ? `${m.id} (default)` : m.id })));
  const nameInput = h("input", { type: "text", id: "job-name", name: "name", maxlength: 200,
    placeholder: "e.g. pets v1" });
  const main = [h("div", {}, h("label", { for: "job-name", text: "name" },
    h("span", { class: "hint", text: "optional; shown in lists" })), nameInput),
  h("div", {}, h("label", { for: "base-model", text: "base model" },
    h("span", { class: "hint", text: "the CLIP model to adapt" })), modelSelect)];
  const advanced = [];
  for (const [key, prop] of Object.entries(props)) {
    if (FORM_BASE.has(key)) continue;
    const field = key === "template" ? templateField(prop, cat.templates)
      : numberField(key, prop, cat.limits);
    (MAIN_FIELDS.includes(key) ? main : advanced).push(field);
  }

  const submit = h("button", { type: "submit", id: "submit-job", text: "Start training" });
  const form = h("form", { class: "card", id: "job-form", onsubmit: async (e) => {
    e.preventDefault();
    const refuse = (message) => status.replaceChildren(errorView(new ApiError(0, message)));
    if (sending) return;
    if (!picked || (!picked.items.length && !picked.manifest)) {
      refuse("choose a folder or a zip of images first");
      return;
    }
    if (picked.kind === "folder" && picked.loose.length) {
      refuse("move the images that lie beside the class folders into a class folder first");
      return;
    }
    const size = picked.kind === "zip" ? picked.file.size
      : picked.items.reduce((sum, i) => sum + i.file.size, 0);
    if (size > cat.limits.max_request_bytes) {
      refuse(`this upload is ${bytes(size)}; the service takes at most `
        + `${bytes(cat.limits.max_request_bytes)} per job`);
      return;
    }
    if (picked.items.length > cat.limits.max_images) {
      refuse(`${picked.items.length} images; the service takes at most `
        + `${cat.limits.max_images} per job`);
      return;
    }
    const sent = picked;
    const body = new FormData();
    if (picked.kind === "zip") {
      body.append("dataset", picked.file, picked.file.name);
    } else {
      for (const item of picked.items) {
        body.append("images", item.file, item.path);
        body.append("labels", item.cls);
      }
    }
    for (const el of form.querySelectorAll("input[name], select[name]")) {
      if (el.disabled || (el.type === "checkbox" && !el.checked)) continue;
      if (el.value !== "") body.append(el.name, el.value);
    }
    submit.disabled = sending = true;
    renderPreview();
    const meter = h("div", { class: "meter" }, h("div"));
    const what = h("p", { class: "sub", text: "Uploading…" });
    status.replaceChildren(what, meter);
    try {
      const job = await upload("/v1/jobs", body, { "Idempotency-Key": idempotencyKey },
        (f) => {
          meter.firstChild.style.width = `${(100 * f).toFixed(0)}%`;
          if (f >= 1) what.textContent = "Checking every image…";
        }, routeSignal);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      if (err.name === "AbortError") return;
      submit.disabled = sending = false;
      problemsByPath = new Map();
      otherProblems = [];
      for (const p of err.problems) {
        // a problem names its file (cut to 40 characters when long); some name several
        const paths = sent.items.map((i) => i.path).filter((x) => p.includes(x)
          || (x.length > 40 && p.includes(x.slice(0, 40))));
        for (const path of paths) {
          if (!problemsByPath.has(path)) problemsByPath.set(path, []);
          const quoted = [path, `'${path}'`].find((x) => p.startsWith(`${x}: `));
          problemsByPath.get(path).push(quoted ? p.slice(quoted.length + 2) : p);
        }
        if (!paths.length) otherProblems.push(p);
      }
      renderPreview();
      const summary = new ApiError(err.status, err.problems.length
        ? `the job was refused: ${err.problems.length} problem(s), listed with the files `
          + "they concern; nothing was stored" : err.message);
      status.replaceChildren(errorView(summary));
    }
  } },
  h("h2", { style: "margin-top:0", text: "Settings" }),
  h("div", { class: "fields" }, main),
  advanced.length ? h("details", {}, h("summary", { text: "Advanced" }),
    h("div", { class: "fields" }, advanced)) : null,
  h("div", { class: "row", style: "margin-top:1rem" }, submit), status);

  show(h("div", { class: "head" }, h("div", {}, h("h1", { text: "New training job" }),
    h("p", { class: "sub", text: "A few labelled images per class are enough. Defaults are "
      + "the service's; bounds come from its API schema." }))),
  h("div", { class: "card" }, drop), preview, form);
}

// ---------------------------------------------------------------- jobs

function progressText(job) {
  const p = job.progress;
  if (job.status === "running" && p) return `epoch ${p.epoch}/${p.epochs}`;
  return job.status === "queued" ? "waiting for a worker" : "";
}

async function viewJobs() {
  const body = h("tbody");
  const more = h("button", { type: "button", class: "quiet", hidden: true, text: "Load more" });
  let cursor = null;
  const row = (job) => h("tr", { class: "link", "data-job": job.id,
    onclick: () => { location.hash = `#/jobs/${job.id}`; } },
  h("td", {}, h("a", { href: `#/jobs/${job.id}`, text: job.name || job.id.slice(0, 8) })),
  h("td", {}, badge(job.status)), h("td", { text: progressText(job) }),
  h("td", { class: "hide-narrow", text: job.base_model }),
  h("td", { class: "hide-narrow", text: ago(job.created_at) }));

  async function page(reset) {
    const q = new URLSearchParams({ limit: "50" });
    if (!reset && cursor) q.set("cursor", cursor);
    const answer = await api(`/v1/jobs?${q}`);
    if (reset) body.replaceChildren();
    for (const job of answer.data) body.append(row(job));
    cursor = answer.next_cursor;
    more.hidden = !cursor;
    if (!body.children.length) {
      body.append(h("tr", {}, h("td", { colspan: 5, class: "empty" },
        "No jobs yet. ", h("a", { href: "#/new", text: "Start one" }), ".")));
    }
    return answer.data;
  }
  let extended = false;  // once older pages are loaded, the list stops refreshing itself
  more.onclick = () => { extended = true; page(false); };
  let first = await page(true);
  show(h("div", { class: "head" }, h("h1", { text: "Jobs" }),
    h("a", { class: "button", href: "#/new", text: "New job" })),
  h("div", { class: "card" }, h("table", { id: "jobs" }, h("thead", {}, h("tr", {},
    h("th", { text: "name" }), h("th", { text: "status" }), h("th", { text: "progress" }),
    h("th", { class: "hide-narrow", text: "base model" }),
    h("th", { class: "hide-narrow", text: "created" }))), body),
  h("div", { class: "row", style: "margin-top:.8rem" }, more)));
  let timer = null;
  const refresh = async () => {  // keeps the first page current while some job is not done
    if (!extended && first.some((j) => !FINISHED.has(j.status))) {
      try { first = await page(true); } catch { /* shown on the next try */ }
      timer = setTimeout(refresh, 3000);
    }
  };
  timer = setTimeout(refresh, 3000);
  cleanups.push(() => clearTimeout(timer));
}

function lossCurve(points) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "curve");
  svg.setAttribute("id", "loss-curve");
  svg.setAttribute("viewBox", "0 0 600 160");
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS(svg.namespaceURI, "polyline");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(line);
  const label = h("p", { class: "curve-label", id: "loss-label" });
  const box = h("div", {}, label, svg);
  box.update = () => {
    if (!points.length) { label.textContent = "Loss: waiting for the first steps"; return; }
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
    const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const span = y1 - y0 || 1;
    line.setAttribute("points", points.map(([x, y]) =>
      `${(8 + 584 * (x - x0) / (x1 - x0)).toFixed(1)},${(150 - 135 * (y - y0) / span)
        .toFixed(1)}`).join(" "));
    label.textContent = `Loss ${ys[0].toFixed(3)} → ${ys[ys.length - 1].toFixed(3)} over `
      + `${points.length} reports`;
  };
  box.update();
  return box;
}

async function viewJob(jobId) {
  let job = await api(`/v1/jobs/${enc(jobId)}`);
  const points = [];
  const stat = (id, label) => h("div", { class: "stat" }, h("b", { id, text: "—" }),
    h("span", { text: label }));
  const stats = h("div", { class: "stats" }, stat("stat-epoch", "epoch"),
    stat("stat-loss", "loss"), stat("stat-speed", "images / s"), stat("stat-eta", "time left"));
  const meter = h("div", { class: "meter" }, h("div", { id: "progress-bar" }));
  const curve = lossCurve(points);
  const outcome = h("div", { id: "outcome" });
  const statusSlot = h("span", { id: "job-status" });
  const trouble = h("p", { class: "sub", id: "stream-trouble", hidden: true });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-job",
    text: "Cancel", onclick: async () => {
      cancel.disabled = true;
      try {
        job = await api(`/v1/jobs/${enc(jobId)}/cancel`, { method: "POST" });
        render();
      } catch (e) {
        cancel.disabled = false;
        notice(sentence(e.message));
      }
    } });

  function progress(p) {
    if (!p) return;
    document.getElementById("stat-epoch").textContent = `${p.epoch} / ${p.epochs}`;
    document.getElementById("stat-loss").textContent = p.loss?.toFixed(4) ?? "—";
    document.getElementById("stat-speed").textContent = p.images_per_sec?.toFixed(1) ?? "—";
    document.getElementById("stat-eta").textContent =
      FINISHED.has(job.status) ? "—" : duration(p.eta_seconds);
    const done = p.total_steps ? p.step / p.total_steps : p.epoch / p.epochs;
    document.getElementById("progress-bar").style.width = `${(100 * done).toFixed(1)}%`;
  }

  function render() {
    statusSlot.replaceChildren(badge(job.status));
    cancel.hidden = FINISHED.has(job.status) || job.cancel_requested;
    outcome.replaceChildren();
    if (job.cancel_requested && !FINISHED.has(job.status)) {
      outcome.append(h("p", { class: "sub", text: "Cancelling: the worker stops within a few "
        + "seconds." }));
    }
    if (job.status === "queued") {
      outcome.append(h("p", { class: "sub", text: "Waiting for a worker to pick this job up." }));
    } else if (job.status === "failed") {
      outcome.append(h("div", { class: "error-box", id: "job-error" },
        h("b", { text: "Training failed. " }), sentence(job.error || "no reason was recorded")));
    } else if (job.status === "cancelled") {
      outcome.append(h("div", { class: "error-box" }, "This job was cancelled; no adapter was "
        + "stored."));
    } else if (job.status === "succeeded" && job.adapter_id) {
      const accuracy = h("span", { id: "job-accuracy" });
      outcome.append(h("div", { class: "ok-box", id: "job-done" }, h("b", { text: "Done. " }),
        accuracy, "The adapter is stored: ",
        h("a", { href: `#/adapters/${job.adapter_id}`, id: "adapter-link",
          text: "see its details" }), " or ",
        h("a", { href: `#/try?adapter=${job.adapter_id}`, text: "try it on images" }), "."));
      api(`/v1/adapters/${enc(job.adapter_id)}`).then((a) => {
        const { zero, tuned } = accuracies(a);
        if (tuned !== null) {
          accuracy.textContent = `Held-out accuracy ${pct(zero)} zero-shot, ${pct(tuned)} `
            + "tuned. ";
        }
      }).catch(() => {});
    }
    if (FINISHED.has(job.status)) {
      document.getElementById("stat-eta").textContent = "—";
      if (job.status === "succeeded") document.getElementById("progress-bar").style.width = "100%";
      if (!points.length) document.getElementById("loss-label").textContent = "No training steps ran.";
    }
  }

  const hp = Object.entries(job.hyperparameters).map(([k, v]) => [k, String(v)]);
  if (job.auto) hp.push(["auto", job.auto.join(",")]);
  if (job.parent_adapter_id) hp.push(["warm start from", job.parent_adapter_id]);
  if (job.retrain) hp.push(["retrain", retrainText(job.retrain)]);
  show(h("div", { class: "head" }, h("div", {}, h("h1", { text: job.name || "Training job" }),
    h("p", { class: "sub mono", text: job.id })), h("div", { class: "row" }, statusSlot, cancel)),
  h("div", { class: "card" }, h("h2", { style: "margin-top:0", text: "Progress" }), meter,
    stats, curve, trouble, outcome),
  h("div", { class: "card" }, h("h2", { style: "margin-top:0", text: "Settings" }),
    h("dl", { class: "facts" }, [["base model", job.base_model],
      ["templates", job.templates.join(" | ")], ...hp,
      ["created", new Date(job.created_at).toLocaleString()]]
      .flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]))));
  progress(job.progress);
  render();

  const controller = new AbortController();
  cleanups.push(() => controller.abort());
  followEvents(jobId, async (event) => {
    if (event.kind === "progress") {  // replayed history included: no request per event
      const p = event.payload;
      points.push([p.total_steps ? p.step : p.epoch, p.loss]);
      curve.update();
      progress(p);
      return;
    }
    job = await api(`/v1/jobs/${enc(jobId)}`, { signal: controller.signal });
    progress(job.progress);
    render();
  }, controller.signal, (message) => {
    trouble.hidden = !message;
    trouble.textContent = message || "";
  }, () => FINISHED.has(job.status)).catch((e) => {
    if (e.name !== "AbortError") notice(sentence(e.message));
  });
}

// ---------------------------------------------------------------- adapters

function accuracies(a) {
  const m = a.metrics || {};
  return { zero: m.zero_shot_val_accuracy ?? null, tuned: m.val_accuracy ?? null };
}

async function viewAdapters() {
  const answer = await api("/v1/adapters?limit=200");
  const rows = answer.data.map((a) => {
    const { zero, tuned } = accuracies(a);
    return h("tr", { class: "link", "data-adapter": a.id,
      onclick: () => { location.hash = `#/adapters/${a.id}`; } },
    h("td", {}, h("a", { href: `#/adapters/${a.id}`, text: a.name
      ? `${a.name}${a.version ? ` v${a.version}` : ""}` : a.id.slice(0, 8) })),
    h("td", { class: "num", text: a.classnames.length }),
    h("td", { class: "num", text: pct(zero) }), h("td", { class: "num", text: pct(tuned) }),
    h("td", { class: "hide-narrow", text: a.base_model }),
    h("td", { class: "hide-narrow", text: ago(a.created_at) }));
  });
  if (!rows.length) {
    rows.push(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No adapters yet: each "
      + "finished job stores one. ", h("a", { href: "#/new", text: "Train one" }), ".")));
  }
  show(h("div", { class: "head" }, h("div", {}, h("h1", { text: "Adapters" }),
    h("p", { class: "sub", text: "Accuracy on the held-out part of each upload." }))),
  h("div", { class: "card" }, h("table", { id: "adapters" }, h("thead", {}, h("tr", {},
    h("th", { text: "name" }), h("th", { class: "num", text: "classes" }),
    h("th", { class: "num", text: "zero-shot" }), h("th", { class: "num", text: "tuned" }),
    h("th", { class: "hide-narrow", text: "base model" }),
    h("th", { class: "hide-narrow", text: "created" }))), h("tbody", {}, rows))),
  answer.next_cursor ? h("p", { class: "sub", text: "Showing the newest 200." }) : null);
}

function evaluationCard(report) {
  if (!report) return null;
  const { evaluation, calibration: cal } = report;
  const zero = evaluation.zero_shot.per_class;
  const rows = evaluation.tuned.per_class.map((t, i) => h("tr", { "data-class": t.class },
    h("td", { text: t.class }), h("td", { class: "num", text: t.images }),
    h("td", { class: "num", text: pct(zero[i].recall) }), h("td", { class: "num", text: pct(t.recall) }),
    h("td", { class: "num", text: t.recall_gain === null ? "—"
      : `${t.recall_gain >= 0 ? "+" : ""}${(100 * t.recall_gain).toFixed(1)}` }),
    h("td", { class: "num hide-narrow", text: pct(zero[i].precision) }),
    h("td", { class: "num hide-narrow", text: pct(t.precision) })));
  const parts = [h("h2", { style: "margin-top:0", text: "Per class, on the held-out images" }),
    h("table", { id: "evaluation" }, h("thead", {}, h("tr", {}, h("th", { text: "class" }),
      h("th", { class: "num", text: "images" }), h("th", { class: "num", text: "zero-shot recall" }),
      h("th", { class: "num", text: "tuned recall" }), h("th", { class: "num", text: "gain (points)" }),
      h("th", { class: "num hide-narrow", text: "zero-shot precision" }),
      h("th", { class: "num hide-narrow", text: "tuned precision" }))), h("tbody", {}, rows))];
  const names = evaluation.classnames;
  if (names.length <= 20) {
    const matrix = evaluation.tuned.confusion_matrix;
    parts.push(h("details", {}, h("summary", { text: "Confusion matrix (tuned; rows: true class, "
      + "columns: predicted)" }), h("table", { id: "confusion" },
      h("thead", {}, h("tr", {}, h("th"), names.map((n) => h("th", { class: "num", text: n })))),
      h("tbody", {}, matrix.map((row, i) => h("tr", {}, h("th", { text: names[i] }),
        row.map((v) => h("td", { class: "num", text: v }))))))));
  }
  if (cal) {
    parts.push(h("p", { class: "sub", id: "calibration" }, `Calibration: temperature `
      + `${cal.temperature}, expected calibration error ${pct(cal.ece_before)} → `
      + `${pct(cal.ece_after)}. `, cal.threshold === null ? "No rejection threshold." : `With `
      + `"unknown" on, images whose top probability is below ${pct(cal.threshold)} are answered `
      + `"unknown" (on the held-out images: ${pct(cal.held_out_rejected_right)} of the right `
      + `answers${cal.held_out_rejected_wrong === null ? "" : `, ${pct(cal.held_out_rejected_wrong)} `
      + "of the wrong ones"}).`));
  }
  return h("div", { class: "card" }, parts);
}

async function viewAdapter(adapterId) {
  const a = await api(`/v1/adapters/${enc(adapterId)}`);
  let report = null;
  try {
    report = await api(`/v1/adapters/${enc(adapterId)}/evaluation`);
  } catch (e) {
    if (e.status !== 404) throw e;  // 404: no held-out split, no report
  }
  await loadCatalog();  // the capture and retrain forms' bounds and help
  const comparison = (a.metrics || {}).comparison || null;
  const [capture, served, waiting, aliases, previous] = await Promise.all([
    api(`/v1/adapters/${enc(adapterId)}/capture`),
    patient(() => api(`/v1/adapters/${enc(adapterId)}/stats?hours=${SERVED_HOURS}`),
      routeSignal),
    countWaiting(adapterId, routeSignal),
    a.name ? patient(() => api(`/v1/aliases?${new URLSearchParams({ name: a.name })}`),
      routeSignal).then((r) => r.data) : [],
    comparison?.previous_adapter_id ? previousVersion(comparison.previous_adapter_id) : null,
  ]);
  const { zero, tuned } = accuracies(a);
  const gain = zero !== null && tuned !== null ? `${(100 * (tuned - zero)).toFixed(1)} points`
    : "—";
  const stat = (id, value, label) => h("div", { class: "stat" }, h("b", { id, text: value }),
    h("span", { text: label }));
  const status = h("div");
  const download = h("button", { type: "button", class: "quiet", id: "download",
    text: "Download", onclick: async () => {
      try {
        const r = await api(`/v1/adapters/${enc(adapterId)}/download`, { raw: true });
        const url = URL.createObjectURL(await r.blob());
        const link = h("a", { href: url, download: `clipfit-adapter-${adapterId}.zip` });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      } catch (e) { status.replaceChildren(errorView(e)); }
    } });
  const remove = h("button", { type: "button", class: "danger", id: "delete",
    text: "Delete", onclick: async () => {
      if (!window.confirm(`Delete adapter ${a.name || a.id}? Classify requests naming it will `
        + "fail from now on.")) return;
      try {
        await api(`/v1/adapters/${enc(adapterId)}`, { method: "DELETE" });
        location.hash = "#/adapters";
      } catch (e) { status.replaceChildren(errorView(e)); }
    } });
  const m = a.metrics || {};
  const facts = [["id", a.id], ...(a.version ? [["reference", `${a.name}@${a.version}`]] : []),
    ["base model", a.base_model],
    ["templates", a.templates.join(" | ")], ["trained numbers", a.trainable_count.toLocaleString()],
    ["size", bytes(a.size_bytes)], ["held-out images", m.val_images ?? "none"],
    ["training images", m.train_images ?? "—"], ["training time", duration(m.seconds)],
    ...Object.entries(a.hyperparameters).filter(([k]) => !["templates", "train_images"]
      .includes(k)).map(([k, v]) => [k, String(v)]),
    ["sha256", a.sha256], ["created", new Date(a.created_at).toLocaleString()]];
  show(h("div", { class: "head" }, h("div", {}, h("h1", { text: a.name || "Adapter" }),
    h("p", { class: "sub" }, a.job_id ? h("a", { href: `#/jobs/${a.job_id}`,
      text: "the job that trained it" }) : "imported")),
  h("div", { class: "row" }, h("a", { class: "button", href: `#/try?adapter=${a.id}`,
    text: "Try it" }), download, remove)), status,
  h("div", { class: "card" }, h("h2", { style: "margin-top:0", text: "Held-out accuracy" }),
    tuned === null ? h("p", { class: "sub", text: "This job kept no held-out images "
      + "(val_fraction 0), so there is nothing to compare." }) : null,
    h("div", { class: "stats" }, stat("acc-zero", pct(zero), "zero-shot"),
      stat("acc-tuned", pct(tuned), "tuned"), stat("acc-gain", gain, "gain"),
      stat("acc-classes", String(a.classnames.length), "classes"))),
  comparison ? comparisonCard(comparison, previous) : null, servedCard(served),
  evaluationCard(report), captureCard(a, capture),
  h("div", { class: "grid2" }, retrainCard(a, waiting, aliases), promoteCard(a, aliases)),
  h("div", { class: "grid2" },
    h("div", { class: "card" }, h("h2", { style: "margin-top:0", text: "Classes" }),
      h("div", { class: "chips" }, a.classnames.map((c) => h("span", { class: "chip", text: c })))),
    h("div", { class: "card" }, h("h2", { style: "margin-top:0", text: "Details" }),
      h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", { text: k }),
        h("dd", { class: k === "sha256" || k === "id" ? "mono" : null, text: String(v) })])))));
}

// ---------------------------------------------------------------- capture and review

// docs/capture.md's order: the rules (checked in this order), then the filter and the
// limits; the schema's other fields follow in its order
const CAPTURE_ORDER = ["unknown", "below_confidence", "classes", "sample_rate", "alias",
  "max_per_hour", "max_per_day", "retention_days"];
const REVIEW_STATES = ["pending", "labelled", "discarded"];
const REVIEW_PAGE = 50;
const COUNT_PAGES = 10;  // the API has no count: up to 10 pages of 200 are counted, then "+"

function captureSummary(s) {
  if (!s.enabled) return "Off: nothing this adapter classifies is kept.";
  const keeps = [];
  if (s.unknown) keeps.push("answers of \"unknown\"");
  if (s.below_confidence) keeps.push(`answers below ${pct(s.below_confidence)} confidence`);
  if (s.classes.length) keeps.push(`answers of ${s.classes.join(", ")}`);
  if (s.sample_rate) keeps.push(`${pct(s.sample_rate)} of all answers, at random`);
  const limits = [];
  if (s.alias) limits.push(`only requests through @${s.alias}`);
  if (s.max_per_hour !== null) limits.push(`at most ${s.max_per_hour} an hour`);
  if (s.max_per_day !== null) limits.push(`at most ${s.max_per_day} a day`);
  limits.push(`each kept ${s.retention_days} days`);
  return `On: keeps ${keeps.join("; ")} (${limits.join(", ")}).`;
}

// One field of the capture form, its type, bounds and help from the API schema; the current
// settings fill it (after "turn off" too, so that "turn on" brings them back). null for a
// kind of value the form cannot show.
function captureField(key, prop, adapter, s) {
  const id = `capture-${key}`;
  const label = key.replaceAll("_", " ");
  const variants = prop.anyOf || [];
  const type = prop.type ?? variants.map((t) => t.type).find((t) => t !== "null");
  const choices = prop.enum ?? variants.find((t) => t.enum)?.enum;
  const value = s[key] ?? null;
  if (key === "classes") {  // a list of the adapter's own classes
    const chosen = new Set(value || []);
    return h("details", { id, open: chosen.size > 0 }, h("summary", { text: prop.description }),
      h("div", { class: "chips" }, adapter.classnames.map((c) => h("label",
        { class: "choice chip" }, h("input", { type: "checkbox", name: key, value: c,
          checked: chosen.has(c) }), c))));
  }
  if (type === "boolean") {
    return h("div", {}, h("label", { class: "choice", style: "margin:0" },
      h("input", { type: "checkbox", id, name: key, checked: Boolean(value) }), label),
    h("span", { class: "hint", text: prop.description || "" }));
  }
  let input;
  if (choices) {
    input = h("select", { id, name: key }, h("option", { value: "", text: "(default)" }),
      choices.map((c) => h("option", { value: c, text: c, selected: c === value })));
  } else if (type === "string") {
    input = h("input", { type: "text", id, name: key, value,
      disabled: key === "alias" && !adapter.name });
  } else if (type === "integer" || type === "number") {
    input = h("input", { type: "number", id, name: key, value, min: prop.minimum,
      max: prop.maximum, step: type === "integer" ? "1" : "any" });
  } else {
    return null;
  }
  const range = prop.minimum !== undefined && prop.maximum !== undefined
    ? ` (${prop.minimum} to ${Number(prop.maximum).toLocaleString("en")})` : "";
  const hint = key === "alias" && !adapter.name ? "this adapter has no name, so no aliases"
    : `${prop.description || ""}${range}`;
  return h("div", {}, h("label", { for: id }, label, h("span", { class: "hint", text: hint })),
    input);
}

function captureValues(form) {
  const values = {};
  const problems = [];
  for (const el of form.querySelectorAll("input[name], select[name]")) {
    if (el.disabled) continue;
    if (el.name === "classes") {
      if (el.checked) values.classes = [...(values.classes || []), el.value];
    } else if (el.type === "checkbox") {
      if (el.checked) values[el.name] = true;
    } else if (el.validity.badInput) {
      problems.push(`${el.name}: not a number`);
    } else if (el.value.trim() !== "") {
      values[el.name] = el.type === "number" ? Number(el.value) : el.value.trim();
    }
  }
  return { values, problems };
}

// The adapter page's capture card. The form is sent as typed (novalidate): the service names
// every problem at once in its 422, where the browser would stop at the first.
function captureCard(adapter, initial) {
  const card = h("div", { class: "card", id: "capture" });
  const path = `/v1/adapters/${enc(adapter.id)}/capture`;
  const props = captureSchema.properties;

  function render(s, message) {
    const status = h("div", { id: "capture-status", class: "status" },
      message ? h("div", { class: "ok-box", text: message }) : null);
    const save = h("button", { type: "submit", id: "capture-save",
      text: s.enabled ? "Save" : "Turn on" });
    const off = h("button", { type: "button", class: "danger", id: "capture-off",
      text: "Turn off", hidden: !s.enabled, onclick: async () => {
        off.disabled = true;
        try {
          await api(path, { method: "DELETE" });
          render({ ...s, enabled: false }, "Capture is off. What was captured stays until it "
            + "expires.");
        } catch (e) {
          if (e.name === "AbortError") return;
          off.disabled = false;
          status.replaceChildren(errorView(e));
        }
      } });
    // A PUT replaces the whole setting: every field of the schema is on the form, and one it
    // cannot show keeps its current value.
    const keys = [...CAPTURE_ORDER.filter((k) => props[k]),
      ...Object.keys(props).filter((k) => !CAPTURE_ORDER.includes(k))];
    const fields = new Map(keys.map((k) => [k, captureField(k, props[k], adapter, s)]));
    const form = h("form", { id: "capture-form", novalidate: true, onsubmit: async (e) => {
      e.preventDefault();
      const { values, problems } = captureValues(form);
      for (const [k, field] of fields) if (!field && s[k] !== null) values[k] = s[k];
      if (problems.length) {
        status.replaceChildren(errorView(new ApiError(0, "some values are not numbers",
          problems)));
        return;
      }
      save.disabled = true;
      status.replaceChildren(h("p", { class: "sub", text: "Saving…" }));
      try {
        render(await api(path, { method: "PUT", json: values }), "Saved: the images this "
          + "adapter classifies from now on are kept by these rules.");
      } catch (err) {
        if (err.name === "AbortError") return;
        save.disabled = false;
        status.replaceChildren(errorView(err));
      }
    } },
    h("div", { class: "fields" }, [...fields].filter(([k]) => k !== "classes")
      .map(([, field]) => field)), fields.get("classes"),
    h("div", { class: "row", style: "margin-top:1rem" }, save, off), status);
    card.dataset.enabled = String(s.enabled);
    card.replaceChildren(h("div", { class: "head", style: "margin-bottom:.4rem" },
      h("h2", { style: "margin:0", text: "Capture" }),
      h("a", { class: "button quiet", id: "review-link", href: `#/adapters/${adapter.id}/review`,
        text: "Review captures" })),
    h("p", { class: "summary", id: "capture-summary", text: captureSummary(s) }),
    h("p", { class: "sub", text: "Keep some of the images this adapter classifies, to look "
      + "at and label them. Give at least one rule; the others are optional. "
      + (adapter.name ? `The settings and captures belong to every version of ${adapter.name}.`
        : "") }),
    form);
  }
  render(initial, null);
  return card;
}

// A request the key's rate limit refused (429) is sent again once the server allows it: a
// page of images is a burst, and a reviewer's verdict must not be lost to it.
async function patient(send, signal, tries = 5) {
  for (let i = 1; ; i++) {
    try {
      return await send();
    } catch (e) {
      if (e.status !== 429 || i >= tries) throw e;
      await sleep(1000 * (e.retryAfter || 1));
      if (signal.aborted) throw new DOMException("left the page", "AbortError");
    }
  }
}

function kbd(text) {
  return h("kbd", { text });
}

function verdictText(c) {
  if (c.state === "labelled") return `labelled ${c.label}${c.new_class ? " (a new class)" : ""}`;
  return c.state === "discarded" ? "discarded" : "";
}

async function viewReview(adapterId) {
  const a = await api(`/v1/adapters/${enc(adapterId)}`);
  const base = `/v1/adapters/${enc(adapterId)}/captures`;
  const signal = routeSignal;
  const shown = new Map();  // capture id -> { capture, el, img, verdict, url }, in grid order
  let state = "pending";
  let cursor = null;
  let selected = null;  // a capture id
  let generation = 0;  // a listing of another state makes the answers to older ones stale
  let pending = 0;
  let atLeast = false;
  cleanups.push(() => shown.forEach((t) => t.url && URL.revokeObjectURL(t.url)));
  const nearby = new IntersectionObserver((seen) => {  // images of tiles about to be seen
    for (const { target, isIntersecting } of seen) {
      if (!isIntersecting) continue;
      nearby.unobserve(target);
      const entry = shown.get(target.dataset.capture);
      if (entry) showImage(entry);
    }
  }, { rootMargin: "600px 0px" });
  cleanups.push(() => nearby.disconnect());

  const grid = h("div", { class: "captures", id: "captures", role: "listbox",
    "aria-label": "captures" });
  const empty = h("p", { class: "empty", id: "captures-empty", hidden: true });
  const status = h("div", { id: "review-status" });
  const count = h("b", { id: "pending-count" });
  const more = h("button", { type: "button", class: "quiet", id: "load-more", hidden: true,
    text: "Load more", onclick: () => load(false).catch(fail) });
  const stateSelect = h("select", { id: "review-state", onchange: () => {
    state = stateSelect.value;
    stateSelect.blur();  // the keys work on the grid again
    load(true).catch(fail);
  } }, REVIEW_STATES.map((s) => h("option", { value: s, text: s })));
  const other = h("input", { type: "text", id: "other-class", autocomplete: "off",
    placeholder: "a class the adapter lacks" });

  function fail(e) {
    if (e.name !== "AbortError") status.replaceChildren(errorView(e));
  }
  const showCount = () => { count.textContent = `${pending}${atLeast ? "+" : ""} pending`; };

  async function countPending() {
    let next = null;
    for (let page = 0; page < COUNT_PAGES; page++) {
      const q = new URLSearchParams({ state: "pending", limit: "200" });
      if (next) q.set("cursor", next);
      const answer = await patient(() => api(`${base}?${q}`, { signal }), signal);
      pending += answer.data.length;
      next = answer.next_cursor;
      if (!next) return;
    }
    atLeast = true;
  }

  async function showImage(entry) {
    try {
      const blob = await patient(async () => (await api(`${base}/${enc(entry.capture.id)}/image`,
        { raw: true, signal })).blob(), signal);
      if (signal.aborted || shown.get(entry.capture.id) !== entry) return;  // gone meanwhile
      entry.url = URL.createObjectURL(blob);
      entry.img.src = entry.url;
    } catch (e) {
      if (e.name !== "AbortError") entry.img.alt = `the image could not be loaded: ${e.message}`;
    }
  }

  function paint(entry) {
    entry.el.dataset.state = entry.capture.state;
    entry.verdict.textContent = verdictText(entry.capture);
  }

  function tile(c) {
    const entry = { capture: c, url: null, img: h("img", { alt: c.filename }),
      verdict: h("div", { class: "verdict" }) };
    const choices = c.top_k.slice(0, 9).map((l, i) => h("li", {},
      h("button", { type: "button", class: "choice", title: `label it ${l.label} (${i + 1})`,
        onclick: (e) => {
          e.stopPropagation();
          select(c.id, false);
          judge({ label: l.label });
        } }, kbd(String(i + 1)), h("span", { text: l.label }),
      h("span", { class: "pct", text: pct(l.prob) }))));
    entry.el = h("div", { class: "card capture", "data-capture": c.id, role: "option",
      "aria-selected": "false", tabindex: -1, onclick: () => select(c.id, false) }, entry.img,
    h("div", { class: c.unknown ? "top unknown" : "top" },
      h("span", { class: "answer", text: c.predicted }),
      h("span", { class: "pct confidence", text: pct(c.confidence) })),
    h("div", { class: "meta" }, h("span", { class: "rule", text: c.rule }),
      ` ${ago(c.created_at)}`),
    h("ol", { class: "choices" }, choices), entry.verdict);
    paint(entry);
    return entry;
  }

  function select(id, scroll = true) {
    const before = shown.get(selected);
    if (before) {
      before.el.classList.remove("selected");
      before.el.setAttribute("aria-selected", "false");
    }
    selected = id;
    const entry = shown.get(id);
    if (!entry) return;
    entry.el.classList.add("selected");
    entry.el.setAttribute("aria-selected", "true");
    if (scroll) entry.el.scrollIntoView({ block: "nearest" });
  }

  const open = () => [...grid.children].filter((el) => !el.classList.contains("saving"));
  function move(step) {
    const list = open();
    if (!list.length) return;
    const at = list.findIndex((el) => el.dataset.capture === selected);
    const to = at < 0 ? 0 : Math.max(0, Math.min(list.length - 1, at + step));
    select(list[to].dataset.capture);
  }
  function perRow() {
    const list = [...grid.children];
    const first = list.findIndex((el) => el.offsetTop !== list[0].offsetTop);
    return first < 0 ? Math.max(list.length, 1) : first;
  }

  function refreshEmpty() {
    empty.hidden = grid.children.length > 0;
    empty.replaceChildren(state === "pending"
      ? h("span", {}, "Nothing to review. Captures appear here once ",
        h("a", { href: `#/adapters/${a.id}`, text: "capture is on" }),
        " and the adapter classifies images.")
      : `No ${state} captures.`);
  }

  async function load(reset) {
    const mine = reset ? ++generation : generation;
    const q = new URLSearchParams({ state, limit: String(REVIEW_PAGE) });
    if (!reset && cursor) q.set("cursor", cursor);
    more.disabled = true;
    try {
      const answer = await patient(() => api(`${base}?${q}`, { signal }), signal);
      if (mine !== generation) return;
      if (reset) {
        for (const t of shown.values()) {
          nearby.unobserve(t.el);
          if (t.url) URL.revokeObjectURL(t.url);
        }
        shown.clear();
        grid.replaceChildren();
        selected = null;
      }
      for (const c of answer.data) {
        const entry = tile(c);
        shown.set(c.id, entry);
        grid.append(entry.el);
        nearby.observe(entry.el);
      }
      cursor = answer.next_cursor;
      more.hidden = !cursor;
      if (!shown.has(selected) && grid.firstElementChild) {
        select(grid.firstElementChild.dataset.capture, false);
      }
      refreshEmpty();
    } finally {
      more.disabled = false;
    }
  }

  // Label or discard the selected capture. The selection moves on at once (a reviewer keeps
  // pressing keys); the tile leaves the grid, or shows its new state, once the API agrees.
  async function judge(verdict) {
    const entry = shown.get(selected);
    if (!entry || entry.el.classList.contains("saving")) return false;
    const list = open();
    const at = list.indexOf(entry.el);
    const next = list[at + 1] || list[at - 1];
    entry.el.classList.add("saving");
    if (next) select(next.dataset.capture);
    else select(null);
    try {
      const after = await patient(() => api(`${base}/${enc(entry.capture.id)}`,
        { method: "POST", json: verdict, signal }), signal);
      if (entry.capture.state === "pending" && after.state !== "pending") {
        pending -= 1;
        showCount();
      }
      status.replaceChildren();
      if (shown.get(after.id) !== entry) return true;  // another listing is shown now
      entry.capture = after;
      if (after.state === state) {
        paint(entry);
        entry.el.classList.remove("saving");
      } else {
        shown.delete(after.id);
        nearby.unobserve(entry.el);
        entry.el.remove();
        if (entry.url) URL.revokeObjectURL(entry.url);
        if (!grid.children.length && cursor) load(false).catch(fail);
      }
      refreshEmpty();
      return true;
    } catch (e) {
      if (e.name === "AbortError") return false;
      entry.el.classList.remove("saving");
      if (!shown.has(selected)) select(entry.capture.id);
      status.replaceChildren(errorView(e));
      return false;
    }
  }

  const otherForm = h("form", { class: "row", id: "other-form", onsubmit: async (e) => {
    e.preventDefault();
    const label = other.value.trim();
    if (!label || !shown.has(selected)) {
      status.replaceChildren(errorView(new ApiError(0, label ? "select a capture first"
        : "type the class first")));
      return;
    }
    if (await judge({ label, new_class: true })) {
      other.value = "";
      other.blur();  // back to the keys
    }
  } }, h("label", { for: "other-class", class: "inline", text: "another class" }), other,
  h("button", { type: "submit", class: "quiet", id: "label-other", text: "Label" }),
  h("button", { type: "button", class: "danger", id: "discard", text: "Discard",
    onclick: () => judge({ discard: true }) }));

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
    const t = e.target;
    if (t instanceof Element && (t.closest("input, textarea, select") || t.isContentEditable)) {
      return;  // typing, not reviewing
    }
    const k = e.key;
    if (k === "ArrowRight" || k === "j") move(1);
    else if (k === "ArrowLeft" || k === "k") move(-1);
    else if (k === "ArrowDown") move(perRow());
    else if (k === "ArrowUp") move(-perRow());
    else if (/^[1-9]$/.test(k)) {
      const choice = shown.get(selected)?.capture.top_k[Number(k) - 1];
      if (!choice) return;
      judge({ label: choice.label });
    } else if (k === "x" || k === "X" || k === "Delete") judge({ discard: true });
    else if (k === "o") other.focus();
    else return;
    e.preventDefault();
  }

  await Promise.all([countPending(), load(true)]);
  showCount();
  show(h("div", { class: "head" }, h("div", {},
    h("h1", { text: `Review: ${a.name ? `${a.name}${a.version ? ` v${a.version}` : ""}`
      : a.id.slice(0, 8)}` }),
    h("p", { class: "sub" }, count, " · ", h("a", { href: `#/adapters/${a.id}`,
      text: "the adapter" }), a.name ? ` · captures of every version of ${a.name}, `
      + "labelled with this version's classes" : "")),
  h("div", { class: "row" }, h("label", { for: "review-state", class: "inline", text: "show" }),
    stateSelect)),
  h("div", { class: "card review-bar" }, h("p", { class: "sub keys" }, kbd("←"), kbd("→"),
    " or ", kbd("j"), kbd("k"), " move · ", kbd("1"), "–", kbd("9"), " label with the "
    + "numbered class · ", kbd("x"), " or ", kbd("Delete"), " discard · ", kbd("o"),
  " type another class"), otherForm),
  status, grid, empty, h("div", { class: "row", style: "margin-top:.8rem" }, more));
  document.addEventListener("keydown", onKey);
  cleanups.push(() => document.removeEventListener("keydown", onKey));
}

// ---------------------------------------------------------------- after training: retrain,
// comparison, promotion, what it serves

const SERVED_HOURS = 24;
const HOUR_MS = 3600 * 1000;
const SHARES = [["unknown", "\"unknown\""], ["low_confidence", "low confidence"],
  ["captured", "captured"]];

function signedPoints(x) {
  return x === null || x === undefined ? "—" : `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)}`;
}

function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

function clock(moment) {
  return new Date(moment).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function svgEl(tag, attrs = {}, ...kids) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const kid of kids) el.append(kid instanceof Node ? kid : document.createTextNode(kid));
  return el;
}

function figure(id, value, label) {  // a stat whose label may hold a link
  return h("div", { class: "stat" }, h("b", { id, text: value }), h("span", {}, label));
}

function retrainText(r) {
  return `${plural(r.added, "capture")} added, ${r.benchmarked} to the benchmark set `
    + `(${plural(r.benchmark_images, "image")} in it); promote ${r.promote}`
    + `${r.alias ? ` (alias ${r.alias})` : ""}${r.trigger === "labels" ? ", started by labels"
      : ""}${r.continues ? `, continues job ${r.continues.slice(0, 8)}` : ""}`;
}

// The labelled captures no retrain has taken yet (what the next retrain adds). The API has
// no count: up to COUNT_PAGES pages of 200 labelled ones are read, then "+".
async function countWaiting(adapterId, signal) {
  let waiting = 0;
  let next = null;
  for (let page = 0; page < COUNT_PAGES; page++) {
    const q = new URLSearchParams({ state: "labelled", limit: "200" });
    if (next) q.set("cursor", next);
    const answer = await patient(() => api(`/v1/adapters/${enc(adapterId)}/captures?${q}`,
      { signal }), signal);
    waiting += answer.data.filter((c) => c.dataset_id === null && !c.benchmark).length;
    next = answer.next_cursor;
    if (!next) return { waiting, atLeast: false };
  }
  return { waiting, atLeast: true };
}

async function previousVersion(adapterId) {
  try {
    return await patient(() => api(`/v1/adapters/${enc(adapterId)}`), routeSignal);
  } catch (e) {
    if (e.status === 404) return null;  // deleted since
    throw e;
  }
}

// One field of the retrain form, from the API schema: a choice (enum) as radio buttons, a
// string as a text box; null for a kind of value the form does not show (hyperparameters:
// a retrain keeps its parent job's, which the API can override).
function retrainField(key, prop, adapter, aliases) {
  const id = `retrain-${key}`;
  const label = key.replaceAll("_", " ");
  const variants = prop.anyOf || [];
  const type = prop.type ?? variants.map((t) => t.type).find((t) => t !== "null");
  if (prop.enum) {
    return h("fieldset", { id }, h("legend", {}, label,
      h("span", { class: "hint", text: prop.description || "" })),
    prop.enum.map((v) => h("label", { class: "choice" }, h("input", { type: "radio",
      id: `${id}-${v}`, name: key, value: v, checked: v === prop.default }), v)));
  }
  if (type !== "string") return null;
  const named = key !== "alias" || adapter.name;
  const list = key === "alias" ? h("datalist", { id: `${id}-list` },
    aliases.map((x) => h("option", { value: x.alias }))) : null;
  const hint = !named ? "this adapter has no name, so no aliases"
    : key === "alias" ? `${prop.description || ""}; optional: without one, auto moves every `
      + "alias that points at this version" : prop.description || "";
  return h("div", {}, h("label", { for: id }, label, h("span", { class: "hint", text: hint })),
    h("input", { type: "text", id, name: key, autocomplete: "off", list: list && list.id,
      disabled: !named }), list);
}

// "Retrain from N labelled captures": the name's next version, warm-started from this one,
// on its dataset plus the captures labelled since. Sent as typed (novalidate): the service
// names every problem, and refuses (409) when nothing waits or the adapter cannot be
// retrained here. Not sent again on a 429: a quota's refusal (too many jobs) lasts minutes,
// and its message says when to retry.
function retrainCard(adapter, count, aliases) {
  const n = `${count.waiting}${count.atLeast ? "+" : ""}`;
  const status = h("div", { id: "retrain-status", class: "status" });
  const submit = h("button", { type: "submit", id: "retrain",
    text: `Retrain from ${n} labelled capture${n === "1" ? "" : "s"}` });
  const fields = Object.entries(retrainSchema.properties)
    .map(([key, prop]) => retrainField(key, prop, adapter, aliases)).filter(Boolean);
  const form = h("form", { id: "retrain-form", novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    const body = {};
    for (const el of form.querySelectorAll("input[name]")) {
      if (el.disabled || (el.type === "radio" && !el.checked)) continue;
      if (el.value.trim() !== "") body[el.name] = el.value.trim();
    }
    submit.disabled = true;
    status.replaceChildren(h("p", { class: "sub", text: "Starting the retrain…" }));
    try {
      const job = await api(`/v1/adapters/${enc(adapter.id)}/retrain`,
        { method: "POST", json: body });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      if (err.name === "AbortError") return;
      submit.disabled = false;
      status.replaceChildren(errorView(err));
    }
  } }, h("div", { class: "fields" }, fields),
  h("div", { class: "row", style: "margin-top:1rem" }, submit), status);
  const whose = adapter.name || "this adapter";
  return h("div", { class: "card", id: "retrain-card", "data-waiting": n },
    h("h2", { style: "margin-top:0", text: "Retrain" }),
    h("p", { class: "sub", id: "retrain-waiting", style: "margin-bottom:.5rem" }, count.waiting
      ? `${n} labelled capture${n === "1" ? "" : "s"} of ${whose} wait${n === "1" ? "s" : ""}: `
        + "a retrain adds them to a new version of the training dataset (every fifth goes to "
        + "the benchmark set instead) and trains the next version from this one, with its "
        + "job's settings."
      : ["No labelled captures wait: label some in ", h("a", {
        href: `#/adapters/${adapter.id}/review`, text: "the review" }), " first (a retrain "
        + "whose job failed or was cancelled is continued without new ones)."]),
    h("p", { class: "sub", style: "margin-bottom:.8rem", text: "With auto, the new version "
      + "takes the alias (without one: every alias pointing at this version) unless it is "
      + "worse than this one beyond chance on the benchmark set; with manual nothing moves "
      + "until you promote it." }),
    form);
}

// Point an alias of the name at this version (create or move; moving back is the rollback).
function promoteCard(adapter, initial) {
  const card = h("div", { class: "card", id: "promote" });
  const title = h("h2", { style: "margin-top:0", text: "Promote" });
  if (!adapter.name) {
    card.append(title, h("p", { class: "sub", text: "This adapter has no name, so no alias "
      + "can point at it: an alias names a version of a name." }));
    return card;
  }
  const name = adapter.name;

  function render(aliases, message) {
    const status = h("div", { id: "promote-status", class: "status" },
      message ? h("div", { class: "ok-box", text: message }) : null);
    const elsewhere = aliases.find((x) => x.adapter_id !== adapter.id);
    const input = h("input", { type: "text", id: "promote-alias", name: "alias",
      autocomplete: "off", list: "promote-aliases", placeholder: "e.g. production",
      value: elsewhere ? elsewhere.alias : "" });
    const submit = h("button", { type: "submit", id: "promote-button", text: "Promote" });
    const rows = aliases.map((x) => h("tr", { "data-alias": x.alias },
      h("td", { class: "mono", text: x.reference }),
      h("td", {}, x.adapter_id === adapter.id ? h("b", { text: "this version" })
        : h("a", { href: `#/adapters/${x.adapter_id}`,
          text: x.version ? `v${x.version}` : x.adapter_id.slice(0, 8) })),
      h("td", { class: "hide-narrow", text: ago(x.updated_at) })));
    const form = h("form", { id: "promote-form", novalidate: true, onsubmit: async (e) => {
      e.preventDefault();
      const alias = input.value.trim();
      if (!alias || alias === "." || alias === "..") {  // "." would not reach the alias route
        status.replaceChildren(errorView(new ApiError(0, alias ? `${alias} is not an alias`
          : "type an alias first, e.g. production")));
        return;
      }
      submit.disabled = true;
      status.replaceChildren(h("p", { class: "sub", text: "Moving…" }));
      try {
        await patient(() => api(`/v1/aliases/${enc(alias)}`, { method: "PUT",
          json: { name, version: adapter.version } }), routeSignal);
        const now = await patient(() => api(`/v1/aliases?${new URLSearchParams({ name })}`),
          routeSignal);
        render(now.data, `${name}@${alias} points at v${adapter.version} now: requests `
          + "naming it are answered by this version from the next one on.");
      } catch (err) {
        if (err.name === "AbortError") return;
        submit.disabled = false;
        status.replaceChildren(errorView(err));
      }
    } }, h("label", { for: "promote-alias" }, "alias", h("span", { class: "hint",
      text: `point ${name}@ALIAS at v${adapter.version} (a new alias is made)` })),
    h("div", { class: "row" }, h("div", { class: "grow" }, input), submit),
    h("datalist", { id: "promote-aliases" }, aliases.map((x) => h("option",
      { value: x.alias }))), status);
    card.replaceChildren(title, rows.length ? h("table", { id: "aliases",
      style: "margin-bottom:.8rem" },
      h("thead", {}, h("tr", {}, h("th", { text: "alias" }), h("th", { text: "points at" }),
        h("th", { class: "hide-narrow", text: "moved" }))), h("tbody", {}, rows))
      : h("p", { class: "sub", id: "no-aliases", style: "margin-bottom:.6rem",
        text: `No alias of ${name} yet.` }), form);
  }
  render(initial, null);
  return card;
}

// A retrained version beside the version it continues and zero-shot, on the name's benchmark
// set, as the worker stored it (metrics.comparison), and what promotion decided.
function comparisonCard(c, previous) {
  const before = previous ? `v${previous.version}` : "the previous version";
  const link = () => (previous === null ? h("span", { text: "the previous version (deleted)" })
    : h("a", { href: `#/adapters/${c.previous_adapter_id}`, class: "previous-link",
      text: before }));
  const parts = [h("h2", { style: "margin-top:0", text: "Compared with the previous version" })];
  const p = c.promotion;
  const promotion = p ? h("p", { id: "cmp-promotion" },
    h("b", { text: `Promotion (${p.promote}): ` }), sentence(p.decision), " ",
    p.moved_aliases.length ? `Aliases moved here: ${p.moved_aliases.join(", ")}.`
      : "No alias moved.") : null;
  if (c.error) {
    parts.push(h("div", { class: "error-box", id: "comparison-error" },
      h("b", { text: "The comparison could not be made: " }), sentence(c.error)),
    c.previous_adapter_id ? h("p", { class: "sub status" }, "Previous version: ", link(), ".")
      : null, promotion);
    return h("div", { class: "card", id: "comparison" }, parts);
  }
  const vs = c.vs_previous || {};
  const zs = c.vs_zero_shot || {};
  const level = `${Math.round(100 * (vs.level ?? 0.95))}%`;
  parts.push(
    h("p", { class: "sub", id: "cmp-images" }, `Accuracy on ${plural(c.images, "image")} of `
      + `the name's benchmark set, which no version trained on (${c.benchmark_images} in the `
      + `set${c.excluded_images ? `; ${c.excluded_images} of classes this version does not `
        + "know left out" : ""}).`),
    h("div", { class: "stats" }, figure("cmp-candidate", pct(c.candidate?.accuracy),
      "this version"), figure("cmp-previous", pct(c.previous?.accuracy), link()),
    figure("cmp-zero", pct(c.zero_shot?.accuracy), "zero-shot"),
    figure("cmp-difference", `${signedPoints(vs.difference)} points`, "vs previous")),
    h("p", { id: "cmp-interval" }, "This version minus ", link(), `: ${signedPoints(vs.difference)}`
      + ` points, ${level} interval ${signedPoints(vs.low)} to ${signedPoints(vs.high)} points `
      + `(paired bootstrap over the images); ${plural(vs.only_new_right ?? 0, "image")} only `
      + `this version got right, ${vs.only_old_right ?? 0} only ${before}. Against zero-shot: `
      + `${signedPoints(zs.difference)} points (${signedPoints(zs.low)} to `
      + `${signedPoints(zs.high)}).`),
    c.not_worse === true ? h("div", { class: "ok-box", id: "cmp-verdict" },
      h("b", { text: "Not worse " }), `than ${before}: not below it on the mean, or the interval `
      + "reaches above zero.") : c.not_worse === false ? h("div", { class: "error-box", id: "cmp-verdict" },
      h("b", { text: "Worse " }), `than ${before} beyond chance: below it on the mean, and the `
      + "interval does not reach above zero.") : h("p", { class: "sub", id: "cmp-verdict", text: "Not judged: no image to "
      + "judge by." }),
    promotion,
    h("table", { id: "comparison-classes" }, h("thead", {}, h("tr", {},
      h("th", { text: "class" }), h("th", { class: "num", text: "images" }),
      h("th", { class: "num", text: "this version" }), h("th", { class: "num", text: before }),
      h("th", { class: "num", text: "zero-shot" }),
      h("th", { class: "num", text: "change (points)" }))),
    h("tbody", {}, (c.per_class || []).map((r) => h("tr", { "data-class": r.class },
      h("td", { text: r.class }), h("td", { class: "num", text: r.images }),
      h("td", { class: "num", text: pct(r.candidate_recall) }),
      h("td", { class: "num", text: pct(r.previous_recall) }),
      h("td", { class: "num", text: pct(r.zero_shot_recall) }),
      h("td", { class: r.change > 0 ? "num up" : r.change < 0 ? "num down" : "num",
        text: signedPoints(r.change) }))))));
  return h("div", { class: "card", id: "comparison" }, parts);
}

// Per hour over the window: answers as bars (scaled to the busiest hour), the shares of
// "unknown", low-confidence and captured answers as lines (0 to 100%), the held-out baseline
// dashed. Drawn in a 10-units-per-hour, 100-units-high box, stretched to the card.
function servedChart(stats, v) {
  const since = Date.parse(stats.since);
  const width = 10 * stats.hours;
  const busiest = Math.max(...v.hours.map((x) => x.predictions));
  const slot = (x) => Math.min(stats.hours - 1,
    Math.max(0, Math.round((Date.parse(x.hour) - since) / HOUR_MS)));
  const svg = svgEl("svg", { class: "served", id: "served-chart",
    viewBox: `0 -2 ${width} 104`, preserveAspectRatio: "none", role: "img",
    "aria-label": `Answers per hour over the last ${stats.hours} hours as bars (the busiest `
      + `hour: ${busiest}), and the shares "unknown", of low confidence and captured as lines` });
  for (const x of v.hours) {
    const height = 100 * x.predictions / busiest;
    svg.append(svgEl("rect", { class: "hour", x: 10 * slot(x) + 1.5, y: 100 - height, width: 7,
      height, "data-hour": x.hour, "data-predictions": x.predictions },
    svgEl("title", {}, `${clock(x.hour)}: ${plural(x.predictions, "answer")}; `
      + SHARES.map(([key, label]) => `${label} ${pct(x[`${key}_share`])}`).join(", "))));
  }
  for (const [key] of SHARES) {
    const base = v.baseline[`${key}_share`];
    if (base !== null && base !== undefined) {
      svg.append(svgEl("line", { class: `baseline ${key}`, "data-series": key, x1: 0,
        x2: width, y1: 100 - 100 * base, y2: 100 - 100 * base,
        "vector-effect": "non-scaling-stroke" }));
    }
    const runs = [];  // a step per hour; an hour without answers breaks the line
    let last = null;
    for (const x of v.hours) {
      const share = x[`${key}_share`];
      if (share === null || share === undefined) { last = null; continue; }
      const i = slot(x);
      if (last !== i - 1) runs.push([]);
      const y = (100 - 100 * share).toFixed(2);
      runs[runs.length - 1].push(`${10 * i},${y}`, `${10 * i + 10},${y}`);
      last = i;
    }
    for (const run of runs) {
      svg.append(svgEl("polyline", { class: key, "data-series": key, points: run.join(" "),
        "vector-effect": "non-scaling-stroke" }));
    }
  }
  return svg;
}

function servedCard(stats) {
  const v = stats.versions[0];
  const t = v.totals;
  const b = v.baseline;
  const card = h("div", { class: "card", id: "served" }, h("div", { class: "head",
    style: "margin-bottom:.4rem" }, h("h2", { style: "margin:0", text: "What it serves" }),
  h("span", { class: "sub", text: `the last ${stats.hours} hours, per hour` })));
  if (!t.predictions) {
    card.append(h("p", { class: "empty", id: "served-empty", text: `Nothing served in the last `
      + `${stats.hours} hours. Every answer this version gives is counted here, per hour `
      + "(within 15 s)." }));
  } else {
    const key = (cls, label) => h("span", {}, h("span", { class: `key ${cls}` }), label);
    const busiest = Math.max(...v.hours.map((x) => x.predictions));
    card.append(servedChart(stats, v),
      h("div", { class: "chart-axis" }, h("span", { text: clock(stats.since) }),
        h("span", { text: clock(Date.parse(stats.since) + HOUR_MS * Math.floor(stats.hours / 2)) }),
        h("span", { text: "now" })),
      h("div", { class: "legend" },
        key("answers", `answers (the busiest hour: ${busiest})`),
        SHARES.map(([cls, label]) => key(cls, label)),
        h("span", { text: "lines: share of the hour's answers, 0–100%; dashed: the held-out "
          + "baseline" })),
      h("p", { id: "served-totals", text: `${plural(t.predictions, "answer")} in the last `
        + `${stats.hours} hours: ${pct(t.unknown_share)} "unknown" (${t.unknown}), `
        + `${pct(t.low_confidence_share)} of low confidence, below `
        + `${pct(stats.low_confidence_below)} (${t.low_confidence}), ${pct(t.captured_share)} `
        + `captured for review (${t.captured}).` }));
  }
  const none = (b.unknown_share ?? null) === null && (b.low_confidence_share ?? null) === null;
  card.append(h("p", { class: "sub", id: "served-baseline", text: none ? "No held-out "
    + "baseline to compare with (no held-out split, or none stored with this version)."
    : `The held-out split predicted ${b.unknown_share === null ? "no share of \"unknown\" "
      + "(no threshold)" : `${pct(b.unknown_share)} "unknown"`} and ${b.low_confidence_share
      === null ? "no share of low confidence (not stored)" : `${pct(b.low_confidence_share)} `
      + "of low confidence"}: the drift check compares what is served with these.` }));
  return card;
}

// ---------------------------------------------------------------- try it

async function viewTry(adapterId) {
  const cat = await loadCatalog();
  const adapters = (await api("/v1/adapters?limit=200")).data;
  let images = [];
  const urls = [];
  cleanups.push(() => urls.forEach((u) => URL.revokeObjectURL(u)));

  const useAdapter = h("input", { type: "radio", name: "source", id: "use-adapter",
    value: "adapter", checked: adapters.length > 0, disabled: !adapters.length });
  const useZero = h("input", { type: "radio", name: "source", id: "use-zero-shot",
    value: "zero", checked: !adapters.length });
  const adapterSelect = h("select", { id: "adapter" }, adapters.map((a) => h("option", {
    value: a.id, selected: a.id === adapterId,
    text: `${a.name || a.id.slice(0, 8)} · ${a.classnames.length} classes` })));
  const modelSelect = h("select", { id: "zero-model" }, cat.data.map((m) =>
    h("option", { value: m.id, selected: m.default, text: m.id })));
  const classesInput = h("input", { type: "text", id: "zero-classes",
    placeholder: "cat, dog, bird" });
  const topK = h("input", { type: "number", id: "top-k", value: 5, min: 1, max: 1000 });
  const rejectUnknown = h("input", { type: "checkbox", id: "reject-unknown" });
  const adapterPart = h("div", { class: "fields" }, h("div", {},
    h("label", { for: "adapter", text: "adapter" }), adapterSelect),
  h("div", {}, h("label", { class: "choice", style: "margin-top:1.6rem" }, rejectUnknown,
    "answer \"unknown\" below the adapter's threshold")));
  const zeroPart = h("div", { class: "fields" },
    h("div", {}, h("label", { for: "zero-model", text: "base model" }), modelSelect),
    h("div", {}, h("label", { for: "zero-classes", text: "classes" },
      h("span", { class: "hint", text: "comma-separated" })), classesInput));
  const sync = () => { adapterPart.hidden = !useAdapter.checked; zeroPart.hidden = !useZero.checked; };
  useAdapter.onchange = useZero.onchange = sync;
  sync();

  const picked = h("p", { class: "sub", id: "picked", text: "No images chosen." });
  const results = h("div", { class: "results", id: "results" });
  const status = h("div");
  const setImages = (files) => {
    images = Array.from(files).filter((f) => f.type.startsWith("image/") || !f.type);
    picked.textContent = images.length ? `${images.length} image(s): `
      + images.slice(0, 4).map((f) => f.name).join(", ") + (images.length > 4 ? " …" : "")
      : "No images chosen.";
  };
  const fileInput = h("input", { type: "file", id: "try-images", multiple: true,
    accept: "image/*", onchange: (e) => setImages(e.target.files) });
  const drop = h("div", { class: "drop", id: "try-drop",
    ondragover: (e) => { e.preventDefault(); drop.classList.add("over"); },
    ondragleave: () => drop.classList.remove("over"),
    ondrop: (e) => { e.preventDefault(); drop.classList.remove("over");
      setImages(e.dataTransfer.files); } },
  h("p", { text: "Drop images here" }), picked,
  h("div", { class: "row" }, h("button", { type: "button", class: "quiet",
    text: "Choose images…", onclick: () => fileInput.click() })), fileInput);

  const run = h("button", { type: "submit", id: "classify", text: "Classify" });
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    if (!images.length) {
      status.replaceChildren(errorView(new ApiError(0, "choose at least one image")));
      return;
    }
    const sent = images;
    const body = new FormData();
    for (const f of sent) body.append("images", f, f.name);
    if (useAdapter.checked) body.append("adapter_id", adapterSelect.value);
    else {
      body.append("base_model", modelSelect.value);
      body.append("classes", classesInput.value);
    }
    body.append("top_k", topK.value || "5");
    if (useAdapter.checked && rejectUnknown.checked) body.append("reject_unknown", "true");
    run.disabled = true;
    status.replaceChildren(h("p", { class: "sub", text: "Classifying…" }));
    try {
      const answer = await api("/v1/classify", { method: "POST", body });
      status.replaceChildren();
      urls.splice(0).forEach((u) => URL.revokeObjectURL(u));
      results.replaceChildren(...answer.predictions.map((p, i) => {
        const url = URL.createObjectURL(sent[i]);
        urls.push(url);
        return h("div", { class: "card result", "data-image": sent[i].name },
          h("img", { src: url, alt: sent[i].name }),
          h("div", { class: "bars" }, h("div", { class: p.unknown ? "top unknown" : "top",
            text: p.unknown ? `unknown (best guess: ${p.top_k[0].label})` : p.label }),
            p.top_k.map((l) => h("div", { class: "bar-row" },
              h("div", { class: "fill" }, h("div", { style: `width:${(100 * l.prob).toFixed(1)}%` }),
                h("span", { text: l.label })),
              h("div", { class: "pct", text: pct(l.prob) })))));
      }));
    } catch (err) {
      if (err.name === "AbortError") return;
      status.replaceChildren(errorView(err));
    } finally {
      run.disabled = false;
    }
  } },
  h("div", {}, h("label", { class: "choice" }, useAdapter, "an adapter"),
    h("label", { class: "choice" }, useZero, "zero-shot with my class names")),
  adapterPart, zeroPart,
  h("div", { class: "fields", style: "margin-top:.9rem" }, h("div", {},
    h("label", { for: "top-k", text: "labels per image" }), topK)),
  h("div", { style: "margin-top:1rem" }, drop),
  h("div", { class: "row", style: "margin-top:1rem" }, run), status);

  show(h("div", { class: "head" }, h("div", {}, h("h1", { text: "Try it" }),
    h("p", { class: "sub", text: "Classify images with an adapter, or zero-shot with any "
      + "class names." }))), form, results);
}

// ---------------------------------------------------------------- batch predictions

function predictionRow(p) {
  const c = p.counts;
  const cells = [h("td", { text: p.id.slice(0, 8) }), h("td", {}, badge(p.status)),
    h("td", { class: "progress", text: `${c.done} / ${c.images}` }),
    h("td", { text: p.adapter || "zero-shot" }), h("td", { text: ago(p.created_at) })];
  const files = h("td", { class: "downloads" });
  if (p.status === "succeeded") {
    for (const format of ["jsonl", "csv"]) {
      files.append(h("button", { type: "button", class: "quiet", text: format.toUpperCase(),
        "data-format": format, onclick: async () => {
          const r = await api(`/v1/predictions/${enc(p.id)}/results?format=${format}`,
            { raw: true });
          const url = URL.createObjectURL(await r.blob());
          const link = h("a", { href: url, download: `prediction-${p.id}.${format}` });
          document.body.append(link);
          link.click();
          link.remove();
          setTimeout(() => URL.revokeObjectURL(url), 10000);
        } }));
    }
  } else if (!FINISHED.has(p.status)) {
    files.append(h("button", { type: "button", class: "quiet", text: "Cancel",
      onclick: () => api(`/v1/predictions/${enc(p.id)}/cancel`, { method: "POST" })
        .catch((e) => notice(e.message)) }));
  } else if (p.error) {
    files.append(h("span", { class: "sub", text: p.error }));
  }
  return h("tr", { "data-prediction": p.id, "data-status": p.status }, ...cells, files);
}

async function viewPredict() {
  const adapters = (await api("/v1/adapters?limit=200")).data;
  const signal = routeSignal;
  const adapterSelect = h("select", { id: "predict-adapter" }, adapters.map((a) =>
    h("option", { value: a.id, text: `${a.name ? `${a.name}@${a.version}` : a.id.slice(0, 8)}`
      + ` · ${a.classnames.length} classes` })));
  const zipInput = h("input", { type: "file", id: "predict-zip", accept: ".zip,application/zip" });
  const status = h("div", { id: "predict-status" });
  const rows = h("tbody", { id: "predictions" });
  const send = h("button", { type: "submit", id: "predict-submit", text: "Classify all",
    disabled: !adapters.length });
  let running = false;  // whether a listed prediction has not finished: then it is polled
  const refresh = async () => {
    const list = (await api("/v1/predictions?limit=20", { signal })).data;
    rows.replaceChildren(...list.map(predictionRow));
    running = list.some((p) => !FINISHED.has(p.status));
    return list;
  };
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    const file = zipInput.files[0];
    if (!file) {
      status.replaceChildren(errorView(new ApiError(0, "choose a zip of images")));
      return;
    }
    const body = new FormData();
    body.append("dataset", file, file.name);
    body.append("adapter", adapterSelect.value);
    send.disabled = true;
    status.replaceChildren(h("p", { class: "sub", text: "Uploading…" }));
    try {
      const p = await upload("/v1/predictions", body, { "Idempotency-Key": randomKey() },
        (f) => { status.firstChild.textContent = `Uploading… ${pct(f)}`; }, signal);
      status.replaceChildren(h("p", { class: "sub", text: `Prediction ${p.id.slice(0, 8)} `
        + `queued: ${p.counts.images} images.` }));
      await refresh();
    } catch (err) {
      if (err.name === "AbortError") return;
      status.replaceChildren(errorView(err));
    } finally {
      send.disabled = !adapters.length;
    }
  } },
  h("div", { class: "fields" },
    h("div", {}, h("label", { for: "predict-adapter", text: "adapter" }), adapterSelect),
    h("div", {}, h("label", { for: "predict-zip", text: "images" },
      h("span", { class: "hint", text: "a zip; folders are only names" })), zipInput)),
  h("div", { class: "row", style: "margin-top:1rem" }, send), status);

  show(h("div", { class: "head" }, h("div", {}, h("h1", { text: "Batch predictions" }),
    h("p", { class: "sub", text: adapters.length ? "Classify a zip of images with an adapter "
      + "in the background; download the answers as JSON Lines or CSV."
      : "Train or import an adapter first." }))), form,
  h("table", { class: "list" }, h("thead", {}, h("tr", {}, ...["prediction", "status",
    "images", "adapter", "submitted", "results"].map((t) => h("th", { text: t })))), rows));
  await refresh();
  // progress: the list is read again every second while any prediction runs
  while (!signal.aborted) {
    await sleep(1000);
    if (signal.aborted) break;
    if (!running) continue;
    try {
      await refresh();
    } catch (e) {
      if (e.name === "AbortError") break;
    }
  }
}

// ---------------------------------------------------------------- start

document.getElementById("sign-out").addEventListener("click", () => signOut(null));
window.addEventListener("hashchange", route);
route();
