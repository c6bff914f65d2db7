// zscir's search page: plain JavaScript, no build step, nothing loaded from elsewhere.
// A search sends the reference (a dropped file or a gallery id) and the text to POST /search;
// clicking a result makes it the next reference, and the next text goes to POST /refine.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  ref: null,          // {kind: "upload", file, url} | {kind: "id", id}
  session: null,      // the session id the last search answered
  choice: null,       // a result chosen as the next reference (an id), while a session runs
  uploadUrl: null,    // object URL of the session's uploaded reference, for the turn strip
  turns: [],
  pickerOffset: 0,
};

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

function newSearch() {
  state.session = null;
  state.choice = null;
  state.turns = [];
  renderTurns();
}

function useFile(file) {
  if (!file) return;
  if (state.uploadUrl) URL.revokeObjectURL(state.uploadUrl);
  state.uploadUrl = URL.createObjectURL(file);
  state.ref = {kind: "upload", file: file};
  newSearch();
  showReference(state.uploadUrl, "Reference: " + file.name + " (uploaded; not stored on the server)");
  $("text").focus();
}

function useGalleryImage(id) {
  state.ref = {kind: "id", id: id};
  newSearch();
  showReference(thumb(id, 256), "Reference: gallery image " + id);
  $("text").focus();
}

async function callApi(path, options) {
  const response = await fetch(api(path), options);
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const err = body && body.error ? body.error : {field: "?", message: response.status + " " + response.statusText};
    throw new Error(err.message);
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
  state.choice = null;
  state.turns = answer.turns;
  setStatus("turn " + answer.turn + ": " + answer.results.length + " results for \u201c" + answer.text + "\u201d");
  const from = answer.reference.kind === "id" ? "gallery image " + answer.reference.id : "your upload";
  $("ref-label").textContent = "Turn " + answer.turn + " searched from " + from +
    ". Click a result to refine from it, or drop / pick another reference to start over.";
  showTimings(answer.timings_ms);
  renderGrid(answer.results, answer.turn);
  renderTurns(answer.turn);
}

function showTimings(t) {
  const names = [["decode", "decode"], ["image_encoder", "image encoder"], ["mapping_network", "mapping network"],
                 ["text_encoder", "text encoder"], ["search", "search"], ["total", "total"]];
  $("timings").textContent = names.filter(([key]) => t[key] !== null && t[key] !== undefined)
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
    cap.innerHTML = "";
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

function renderTurns(current) {
  const box = $("turns-box"), list = $("turns");
  list.replaceChildren();
  box.hidden = state.turns.length === 0;
  state.turns.forEach((t) => {
    const li = document.createElement("li");
    li.className = "turn" + (t.turn === current ? " current" : "");
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
    li.addEventListener("click", () => {
      renderGrid(t.results.map((r, n) => ({rank: n + 1, score: r.score, id: r.id})), t.turn);
      renderTurns(t.turn);
    });
    list.append(li);
  });
}

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

async function loadInfo() {
  try {
    const h = await callApi("healthz");
    const names = Object.keys(h.models);
    const select = $("model");
    names.forEach((name) => {
      const o = document.createElement("option");
      o.value = name;
      o.textContent = name;
      o.selected = name === h.default_model;
      select.append(o);
    });
    $("model-label").hidden = names.length < 2;
    const k = $("k");  // only the k values this server accepts, and its largest
    [...k.options].forEach((o) => { if (parseInt(o.value, 10) > h.limits.max_k) o.remove(); });
    if (![...k.options].some((o) => parseInt(o.value, 10) === h.limits.max_k)) {
      const o = document.createElement("option");
      o.textContent = String(h.limits.max_k);
      k.append(o);
    }
    if (![...k.options].some((o) => o.selected)) k.options[k.options.length - 1].selected = true;
    $("info").textContent = h.index.images + " images \u00b7 model " + h.default_model + " \u00b7 index generation " +
      h.index.generation;
  } catch (e) {
    setStatus(e.message, true);
  }
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
  $("reset").addEventListener("click", () => { newSearch(); $("grid").replaceChildren(); setStatus(""); });
  $("more").addEventListener("click", loadPicker);
  loadInfo();
  loadPicker();
}

setup();
