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
  return new ApiError(status, message, problems);
}

async function responseError(r) {
  let body = null;
  try { body = await r.json(); } catch { /* not JSON: a proxy's page */ }
  return errorFrom(r.status, body, r.headers.get("Retry-After"));
}

async function api(path, { method = "GET", body, headers = {}, signal = routeSignal,
  raw = false } = {}) {
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
  if (!formSchema) {
    const openapi = await api("/openapi.json");
    const post = openapi.paths["/v1/jobs"].post;
    formSchema = post.requestBody.content["multipart/form-data"].schema;
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
  catalog = formSchema = null;
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
  view.replaceChildren(...nodes);
}

const ROUTES = [
  [/^#\/new$/, "new", viewNew],
  [/^#\/jobs$/, "jobs", viewJobs],
  [/^#\/jobs\/([\w-]+)$/, "jobs", viewJob],
  [/^#\/adapters$/, "adapters", viewAdapters],
  [/^#\/adapters\/([\w-]+)$/, "adapters", viewAdapter],
  [/^#\/try(?:\?adapter=([\w-]+))?$/, "try", viewTry],
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
      catalog = formSchema = null;
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
  evaluationCard(report),
  h("div", { class: "grid2" },
    h("div", { class: "card" }, h("h2", { style: "margin-top:0", text: "Classes" }),
      h("div", { class: "chips" }, a.classnames.map((c) => h("span", { class: "chip", text: c })))),
    h("div", { class: "card" }, h("h2", { style: "margin-top:0", text: "Details" }),
      h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", { text: k }),
        h("dd", { class: k === "sha256" || k === "id" ? "mono" : null, text: String(v) })])))));
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

// ---------------------------------------------------------------- start

document.getElementById("sign-out").addEventListener("click", () => signOut(null));
window.addEventListener("hashchange", route);
route();
