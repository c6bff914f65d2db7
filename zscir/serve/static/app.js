// zscir's search page: plain JavaScript, no build step, nothing loaded from elsewhere.
// A search sends the reference (a chosen file or a gallery id) and the text to POST /search;
// clicking a result makes it the next reference, and the next text goes to POST /refine.
// What the page shows always belongs to one turn (state.shown): its grid, its reference and its text.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  ref: null,          // {kind: "upload", file} | {kind: "id", id}: what the next search starts from
  session: null,      // the session id the last search answered
  choice: null,       // a result chosen as the next reference (an id), while a session runs
  uploadUrl: null,    // object URL of the session's uploaded reference, for the turn strip
  turns: [],          // the session's turns, as the last answer listed them
  timings: {},        // turn number -> timings_ms of the answer that made it
  shown: null,        // the turn number whose grid is shown
  limits: {},         // /healthz's limits (max_k, max_upload_bytes, ...), where it gives them
  fileCount: 0,       // files chosen so far: a file checked after a later one was chosen is dropped
  pickerOffset: 0,
};

// Types a browser shows: a file of one of these that does not decode is broken. Other image types
// (TIFF, HEIC, ...) may have no preview here and are left for the server to decode.
const SHOWN_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif"];
const NO_REFERENCE = "No reference yet: drop one, or pick one from the gallery below.";

// API URLs relative to this page, without the user:key@ a browser may have in its address bar
// (fetch refuses URLs with credentials; the browser still sends the key it was given, for the same origin)
const BASE = (() => { const u = new URL(".", location.href); u.username = ""; u.password = ""; return u; })();
const api = (path) => new URL(path, BASE).href;
const thumb = (id, size) => api("images/" + encodeURIComponent(id).replace(/%2F/g, "/") + (size ? "?size=" + size : ""));

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text || "";
  s.classList.toggle("error", !!isError);
}

function showReference(src, label) {
  const img = $("ref-preview");
  img.src = src;
  img.hidden = false;
  $("drop-hint").hidden = true;
  $("ref-label").textContent = label;
}

function clearReference() {
  const img = $("ref-preview");
  img.removeAttribute("src");
  img.hidden = true;
  $("drop-hint").hidden = false;
  $("ref-label").textContent = NO_REFERENCE;
}

// --- sessions -------------------------------------------------------------------------------------------

// A new reference starts a new session: nothing of the old one stays on the page.
function resetSession() {
  state.session = null;
  state.choice = null;
  state.turns = [];
  state.timings = {};
  state.shown = null;
  $("grid").replaceChildren();
  $("grid-title").textContent = "Results";
  $("grid-hint").hidden = true;
  $("timings").textContent = "";
  setStatus("");
  renderTurns();
}

// "New search": the session, the reference and the text all go.
function startOver() {
  resetSession();
  state.ref = null;
  if (state.uploadUrl) URL.revokeObjectURL(state.uploadUrl);
  state.uploadUrl = null;
  $("file").value = "";
  $("text").value = "";
  clearReference();
}

// --- choosing a reference -----------------------------------------------------------------------------

function formatBytes(n) {
  return n >= 2 ** 20 ? (n / 2 ** 20).toFixed(1).replace(/\.0$/, "") + " MB" : Math.round(n / 1024) + " KB";
}

// Why this file cannot be a reference (a sentence), or null when it can; decodes it to tell a broken image.
async function fileProblem(file, url) {
  const name = file.name || "the file";
  if (file.type && !file.type.startsWith("image/")) {
    return name + " is not an image (" + file.type + "): choose a PNG, JPEG, WebP or GIF file";
  }
  const cap = state.limits.max_upload_bytes;
  if (typeof cap === "number" && file.size > cap) {
    return name + " is " + formatBytes(file.size) + ", over the server's limit of " + formatBytes(cap) +
      ": choose a smaller image";
  }
  if (file.type === "" || SHOWN_TYPES.includes(file.type)) {
    try {
      const probe = new Image();
      probe.src = url;
      await probe.decode();
    } catch (e) {
      return name + " is not a readable image: choose a PNG, JPEG, WebP or GIF file";
    }
  }
  return null;
}

async function useFile(file) {
  if (!file) return;
  const count = ++state.fileCount;
  const url = URL.createObjectURL(file);
  const problem = await fileProblem(file, url);
  if (count !== state.fileCount) {  // another file was chosen while this one was checked
    URL.revokeObjectURL(url);
    return;
  }
  if (problem) {  // refused at once, before any upload; the reference in place (if any) stays
    URL.revokeObjectURL(url);
    $("file").value = "";
    setStatus(problem, true);
    return;
  }
  resetSession();
  if (state.uploadUrl) URL.revokeObjectURL(state.uploadUrl);
  state.uploadUrl = url;
  state.ref = {kind: "upload", file: file};
  showReference(url, "Reference: " + file.name + " (uploaded; not stored on the server)");
  $("text").focus();
}

function useGalleryImage(id) {
  resetSession();
  state.ref = {kind: "id", id: id};
  showReference(thumb(id, 256), "Reference: gallery image " + id);
  $("text").focus();
}

// --- talking to the API --------------------------------------------------------------------------------

// The answer's JSON; otherwise an Error whose message a person can read: the API's one line for a 4xx,
// and words instead of the browser's "Failed to fetch" when the server cannot be reached.
async function callApi(path, options) {
  let response;
  try {
    response = await fetch(api(path), options);
  } catch (e) {
    throw new Error("the server is not reachable (" + BASE.host + "): is zscir serve running? Try again later");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const said = body && body.error && (body.error.message || body.error);
    if (typeof said === "string" && response.status < 500) throw new Error(said);
    const what = response.status + " " + response.statusText;
    throw new Error(response.status >= 500 ? "the server failed (" + what + "): try again, or tell its operator"
                                           : "the server refused the request (" + what + ")");
  }
  return body;
}

async function submit(event) {
  if (event) event.preventDefault();
  const text = $("text").value;
  const k = parseInt($("k").value, 10);
  const model = $("model").value || null;
  let answer;
  $("go").disabled = true;
  setStatus("searching...");
  try {
    if (state.session && state.choice) {
      answer = await callApi("refine", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({session: state.session, choice: state.choice, text: text, k: k, model: model})});
    } else {
      if (!state.ref) throw new Error("choose a reference image first: drop one or pick one from the gallery");
      const form = new FormData();
      if (state.ref.kind === "upload") form.append("image", state.ref.file, state.ref.file.name);
      else form.append("image_id", state.ref.id);
      form.append("text", text);
      form.append("k", String(k));
      if (model) form.append("model", model);
      answer = await callApi("search", {method: "POST", body: form});
    }
  } catch (e) {
    setStatus(e.message, true);
    return;
  } finally {
    $("go").disabled = false;
  }
  state.session = answer.session;
  state.turns = answer.turns;
  state.timings[answer.turn] = answer.timings_ms;
  showTurn(answer.turn, answer.results);
}

// --- showing a turn -------------------------------------------------------------------------------------

// Show one turn of the session: its grid, reference, text, status and timings, and mark it in the strip.
function showTurn(number, results) {
  const t = state.turns.find((x) => x.turn === number);
  if (!t) return;
  state.shown = number;
  state.choice = null;
  const rows = results || t.results;
  renderGrid(rows, number);
  const ref = t.reference;
  const fromUpload = ref.kind !== "id";
  const from = fromUpload ? "your upload" : "gallery image " + ref.id;
  showReference(fromUpload ? state.uploadUrl || "" : thumb(ref.id, 256),
    "Turn " + number + " searched from " + from + " for \u201c" + t.text + "\u201d. Click a result to refine " +
    "from it, or drop / pick another reference to start over.");
  $("text").value = t.text;
  selectValue($("k"), String(t.k));
  selectValue($("model"), t.model);
  setStatus("turn " + number + ": " + rows.length + " results for \u201c" + t.text + "\u201d");
  showTimings(state.timings[number]);
  renderTurns();
}

// Select the option of this value, where the list has one.
function selectValue(select, value) {
  const option = [...select.options].find((o) => (o.value || o.textContent) === value);
  if (option) option.selected = true;
}

function showTimings(t) {
  const names = [["decode", "decode"], ["image_encoder", "image encoder"], ["mapping_network", "mapping network"],
                 ["text_encoder", "text encoder"], ["search", "search"], ["total", "total"]];
  $("timings").textContent = !t ? "" : names.filter(([key]) => t[key] !== null && t[key] !== undefined)
    .map(([key, label]) => label + " " + t[key].toFixed(1) + " ms").join(" \u00b7 ");
}

function renderGrid(results, turn) {
  const grid = $("grid");
  grid.replaceChildren();
  $("grid-title").textContent = "Results of turn " + turn;
  $("grid-hint").hidden = results.length === 0;
  results.forEach((r, n) => {
    const fig = document.createElement("figure");
    fig.className = "result";
    fig.dataset.id = r.id;
    const img = document.createElement("img");
    img.src = thumb(r.id);
    img.alt = r.id;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    const rank = document.createElement("b");
    rank.textContent = "#" + (r.rank || n + 1) + " ";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = r.score.toFixed(3);
    const name = document.createElement("div");
    name.textContent = r.id;
    cap.append(rank, score, name);
    fig.append(img, cap);
    fig.addEventListener("click", () => chooseResult(r.id, fig));
    grid.append(fig);
  });
}

function chooseResult(id, fig) {
  if (!state.session) return;
  document.querySelectorAll(".result.chosen").forEach((el) => el.classList.remove("chosen"));
  fig.classList.add("chosen");
  state.choice = id;
  showReference(thumb(id, 256), "Refining from " + id + ": type the next change and press Search");
  const text = $("text");
  text.value = "";
  text.focus();
}

function renderTurns() {
  const box = $("turns-box"), list = $("turns");
  list.replaceChildren();
  box.hidden = state.turns.length === 0;
  state.turns.forEach((t) => {
    const li = document.createElement("li");
    li.className = "turn" + (t.turn === state.shown ? " current" : "");
    li.dataset.turn = t.turn;
    const pair = document.createElement("div");
    pair.className = "pair";
    const ref = document.createElement("img");
    ref.src = t.reference.kind === "id" ? thumb(t.reference.id, 128) : (state.uploadUrl || "");
    ref.alt = "reference of turn " + t.turn;
    const arrow = document.createElement("span");
    arrow.className = "arrow";
    arrow.textContent = "\u2192";
    const top = document.createElement("img");
    if (t.results.length) top.src = thumb(t.results[0].id, 128);
    top.alt = "top result of turn " + t.turn;
    pair.append(ref, arrow, top);
    const label = document.createElement("div");
    label.className = "t";
    label.textContent = t.turn + ". " + t.text;
    li.append(pair, label);
    li.addEventListener("click", () => showTurn(t.turn));
    list.append(li);
  });
}

// --- what the server says about itself ---------------------------------------------------------------

async function loadPicker() {
  try {
    const page = await callApi("gallery?offset=" + state.pickerOffset + "&limit=24");
    page.ids.forEach((id) => {
      const img = document.createElement("img");
      img.src = thumb(id, 128);
      img.alt = id;
      img.title = id;
      img.dataset.id = id;
      img.addEventListener("click", () => useGalleryImage(id));
      $("picker").append(img);
    });
    state.pickerOffset += page.ids.length;
    $("more").hidden = state.pickerOffset >= page.count;
  } catch (e) {
    setStatus(e.message, true);
  }
}

// Offer only the k values this server accepts, and its largest.
function limitK(maxK) {
  const k = $("k");
  [...k.options].forEach((o) => { if (parseInt(o.value, 10) > maxK) o.remove(); });
  if (![...k.options].some((o) => parseInt(o.value, 10) === maxK)) {
    const o = document.createElement("option");
    o.textContent = String(maxK);
    k.append(o);
  }
  if (![...k.options].some((o) => o.selected)) k.options[k.options.length - 1].selected = true;
}

async function loadInfo() {
  let h;
  try {
    h = await callApi("healthz");
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  const names = Object.keys(h.models || {});
  const select = $("model");
  names.forEach((name) => {
    const o = document.createElement("option");
    o.value = name;
    o.textContent = name;
    o.selected = name === h.default_model;
    select.append(o);
  });
  $("model-label").hidden = names.length < 2;
  state.limits = h.limits || {};
  if (typeof state.limits.max_k === "number" && state.limits.max_k > 0) limitK(state.limits.max_k);
  if (h.index) {
    $("info").textContent = h.index.images + " images \u00b7 model " + h.default_model + " \u00b7 index generation " +
      h.index.generation;
  }
  const warnings = [].concat(h.warnings || []).filter((w) => typeof w === "string" && w);
  const notice = $("notice");  // e.g. photos served with the shapes world's CLIP
  notice.textContent = warnings.map((w) => "Warning: " + w).join("\n");
  notice.hidden = warnings.length === 0;
}

function setup() {
  const drop = $("drop"), file = $("file");
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") file.click(); });
  file.addEventListener("change", () => useFile(file.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
  });
  $("form").addEventListener("submit", submit);
  $("reset").addEventListener("click", startOver);
  $("more").addEventListener("click", loadPicker);
  loadInfo();
  loadPicker();
}

setup();
