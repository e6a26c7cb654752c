// curata web page: browse, filter, search and classify through the /v1 API of the same server.
// Plain DOM code, no framework, no CDN; every text from the server goes in through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 48;
const view = { mode: "browse", filters: {}, offset: 0, total: 0, query: "", shown: [] };
let classifiers = [];

// Helpers ---------------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Items are addressed by query parameter: any id works, even one with "/image" or ".." segments in it.
function itemQuery(id) {
  return "id=" + encodeURIComponent(id);
}

class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  // The key lives in an HttpOnly session cookie (no script can read it); this header marks the page's own
  // requests, which no other site can send without a CORS preflight the server refuses.
  headers.set("X-Curata-Client", "page");
  let response;
  try {
    response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  } catch (e) {
    throw new ApiError("the server cannot be reached", "network", 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (response.status === 401) $("key-banner").hidden = false;
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(error.message || response.statusText, error.code || "http_" + response.status,
      response.status);
  }
  return body;
}

function postJson(path, payload) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
}

function postImage(path, file) {
  const form = new FormData();
  form.append("files", file, file.name || "image");
  return api(path, { method: "POST", body: form });
}

// Why a part of the page is empty, in a few words (the full message stays in the tooltip).
function unavailable(error) {
  const short = {
    no_search_index: "no search index yet (run `curata index build`)",
    search_unavailable: "search is not installed on this server",
    no_describer: "nothing to describe with yet (compute features first)",
    describe_unavailable: "describe is not installed on this server",
  };
  return short[error.code] || error.message;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.title = "";
  status.classList.toggle("error", isError);
}

function swatch(colour) {
  const dot = el("span", { class: "swatch", title: colour });
  dot.style.background = colour;
  return dot;
}

function bars(scores) {
  return el("div", { class: "bars" }, Object.entries(scores).map(([name, value]) => {
    const fill = el("div", { class: "fill" });
    fill.style.width = Math.round(Math.max(0, Math.min(1, value)) * 100) + "%";
    return el("div", { class: "barrow" }, el("span", { text: name }), el("div", { class: "track" }, fill),
      el("span", { class: "num", text: value.toFixed(2) }));
  }));
}

function paletteStrip(palette) {
  const strip = el("div", { class: "palette" });
  for (const colour of palette) {
    const part = el("span", { title: `${colour.hex} ${colour.css} ${(colour.share * 100).toFixed(0)}%` });
    part.style.background = colour.hex;
    part.style.width = (colour.share * 100).toFixed(2) + "%";
    strip.append(part);
  }
  return strip;
}

// Gallery ---------------------------------------------------------------------------------------------

function card(item, score, selectable = true) {
  const img = el("img", { src: item.thumbnail_url + "&size=256", alt: item.label || item.id, loading: "lazy" });
  const row = el("div", { class: "row" });
  if (item.colour) row.append(swatch(item.colour));
  row.append(el("span", { text: item.label || "—" }));
  if (score !== undefined) row.append(el("span", { class: "score", text: score.toFixed(3) }));
  const cap = el("div", { class: "cap" }, row, el("span", { class: "id", text: item.id }));
  if (item.matched && item.matched.length) {
    // The traits the text query named that this item has (hybrid search); predicted ones marked "?".
    const predicted = new Set(item.predicted || []);
    const names = item.matched.map((t) => (predicted.has(t) ? `${t}?` : t));
    cap.append(el("span", { class: "matched", title: "matched traits (? = predicted by the tags model)",
      text: "✓ " + names.join(", ") }));
  }
  if (item.excluded || item.duplicate_of) cap.append(el("span", { class: "flag", text: item.excluded ? "excluded"
    : `duplicate of ${item.duplicate_of}` }));
  const button = el("button", { class: "card", type: "button", "data-id": item.id, onclick: () => openItem(item.id) },
    img, cap);
  // A tile with a checkbox for the selection (curate.js); the neighbours in the item dialog are not selectable.
  return selectable ? el("div", { class: "tile" }, button, selectBox(item.id)) : button;
}

function renderCards(items, append) {
  const gallery = $("gallery");
  if (!append) {
    gallery.replaceChildren();
    view.shown = [];
  }
  // Browsing or searching leaves the review screen (curate.js).
  $("review").hidden = true;
  gallery.hidden = false;
  $("mode-review").classList.remove("active");
  $("mode-browse").classList.add("active");
  view.shown.push(...items.map((it) => it.id));
  gallery.append(...items.map((it) => card(it, it.score)));
}

function filterQuery() {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(view.filters)) if (value !== "" && value !== undefined) params.set(name, value);
  return params;
}

async function loadItems(append = false) {
  view.mode = "browse";
  if (!append) view.offset = 0;
  const params = filterQuery();
  params.set("offset", view.offset);
  params.set("limit", PAGE);
  if (view.query) params.set("q", view.query);
  $("back").hidden = !view.query;
  $("query-image").hidden = true;
  try {
    const page = await api("/v1/items?" + params);
    view.total = page.total;
    view.offset += page.items.length;
    renderCards(page.items, append);
    $("heading").textContent = view.query ? `Items mentioning “${view.query}”` : "Collection";
    setStatus(`${page.total} item${page.total === 1 ? "" : "s"}`);
    $("more").hidden = view.offset >= page.total;
  } catch (e) {
    setStatus(e.message, true);
  }
}

function showHits(heading, hits) {
  view.mode = "search";
  $("heading").textContent = heading;
  $("back").hidden = false;
  $("more").hidden = true;
  renderCards(hits.map((h) => ({ ...h, colour: null })), false);
  setStatus(`${hits.length} result${hits.length === 1 ? "" : "s"}`);
}

async function searchText(text) {
  // Hybrid by default: tags named in the query, words and the joint space, fused (the server falls back to
  // the joint space for an index built before hybrid search, and says so in `notes`).
  const params = new URLSearchParams({ q: text, k: PAGE, mode: $("search-mode").value || "hybrid" });
  for (const name of ["label", "collection"]) if (view.filters[name]) params.set(name, view.filters[name]);
  $("query-image").hidden = true;
  try {
    const found = await api("/v1/search/text?" + params);
    showHits(`Search: “${text}”`, found.results);
    const mode = found.mode && found.mode !== "hybrid" ? ` · ${found.mode}` : "";
    if (mode || (found.notes && found.notes.length)) {
      setStatus(`${$("status").textContent}${mode}${found.notes && found.notes.length ? " · " + found.notes[0] : ""}`);
    }
  } catch (e) {
    if (e.status === 409) {
      // No search index: fall back to the items whose text contains the words, and say so.
      view.query = text;
      await loadItems(false);
      setStatus(`${$("status").textContent} · text match only: ${unavailable(e)}`);
      $("status").title = e.message;
    } else {
      setStatus(e.message, true);
    }
  }
}

async function searchImage(file) {
  const box = $("query-image");
  box.replaceChildren(el("img", { src: URL.createObjectURL(file), alt: "query image" }),
    el("span", { class: "muted", text: file.name || "dropped image" }));
  box.hidden = false;
  setStatus("searching…");
  const params = new URLSearchParams({ k: PAGE });
  try {
    const found = await api("/v1/search/image?" + params, { method: "POST", body: imageForm(file) });
    showHits("Similar to your image", found.results[0].results);
  } catch (e) {
    $("gallery").replaceChildren();
    $("heading").textContent = "Similar to your image";
    $("back").hidden = false;
    setStatus(unavailable(e), true);
    $("status").title = e.message;
  }
}

function imageForm(file) {
  const form = new FormData();
  form.append("files", file, file.name || "image");
  return form;
}

// Filters ---------------------------------------------------------------------------------------------

function fillSelect(select, entries) {
  select.replaceChildren(el("option", { value: "", text: "any" }),
    ...entries.map(([value, text]) => el("option", { value, text })));
}

async function loadFacets() {
  try {
    const facets = await api("/v1/items/facets");
    fillSelect($("f-label"), Object.entries(facets.labels).map(([k, n]) => [k, `${k} (${n})`]));
    fillSelect($("f-tag"), Object.entries(facets.tags).map(([k, n]) => [k, `${k} (${n})`]));
    fillSelect($("f-collection"), Object.entries(facets.collections).map(([k, n]) => [k, `${k} (${n})`]));
    fillSelect($("f-cluster"), facets.clusters.map((c) => [String(c.cluster), `${c.cluster}: ${c.name} (${c.size})`]));
    $("f-cluster").disabled = facets.clusters.length === 0;
    const chips = $("f-colours");
    chips.replaceChildren(...Object.entries(facets.colours).map(([name, n]) =>
      el("button", { class: "chip", type: "button", "data-colour": name, title: `${n} items`,
        onclick: (event) => toggleColour(name, event.currentTarget) }, swatch(name), name)));
    if (!chips.children.length) chips.append(el("span", { class: "muted", text: "no palettes computed" }));
  } catch (e) {
    setStatus(e.message, true);
  }
}

function toggleColour(name, button) {
  const on = view.filters.colour !== name;
  view.filters.colour = on ? name : "";
  for (const chip of $("f-colours").querySelectorAll(".chip")) chip.classList.toggle("active", on && chip === button);
  view.query = "";
  loadItems(false);
}

function bindFilters() {
  for (const [id, name] of [["f-label", "label"], ["f-tag", "tag"], ["f-collection", "collection"], ["f-cluster", "cluster"]]) {
    $(id).addEventListener("change", (event) => {
      view.filters[name] = event.target.value;
      view.query = "";
      loadItems(false);
    });
  }
  $("clear-filters").addEventListener("click", () => {
    view.filters = {};
    view.query = "";
    for (const id of ["f-label", "f-tag", "f-collection", "f-cluster"]) $(id).value = "";
    for (const chip of $("f-colours").querySelectorAll(".chip")) chip.classList.remove("active");
    loadItems(false);
  });
}

// Classify --------------------------------------------------------------------------------------------

async function loadModels() {
  try {
    const list = await api("/v1/models");
    classifiers = list.models.filter((m) => m.status === "loaded" || m.status === "not loaded");
    const select = $("c-model");
    select.replaceChildren(...classifiers.map((m) => el("option", { value: m.name, text: `${m.name} (${m.task}: ${m.target})` })));
    if (!classifiers.length) select.append(el("option", { value: "", text: "no trained model" }));
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function classify(file) {
  const out = $("classify-result");
  out.replaceChildren(el("img", { class: "preview", src: URL.createObjectURL(file), alt: "uploaded image" }),
    el("p", { class: "muted", text: "classifying…" }));
  const model = $("c-model").value;
  const [prediction, colours] = await Promise.allSettled([
    model ? postImage(`/v1/predict/${encodeURIComponent(model)}`, file) : Promise.reject(new ApiError("no model")),
    postImage("/v1/colours", file),
  ]);
  out.lastChild.remove();
  if (prediction.status === "fulfilled") {
    const row = prediction.value.results[0];
    const what = row.prediction || (row.tags || []).join(", ") || "—";
    out.append(el("div", { class: "muted", text: `${model} says` }), el("div", { class: "big", id: "classify-label", text: what }),
      bars(row.scores || {}));
  } else if (model) {
    out.append(el("p", { class: "error", text: prediction.reason.message }));
  }
  if (colours.status === "fulfilled") {
    const result = colours.value.results[0];
    out.append(el("h3", { text: "Colours" }), paletteStrip(result.palette),
      el("div", { class: "palette-legend" }, result.names.map((n) =>
        el("span", { class: "chip" }, swatch(n.name), `${n.name} ${(n.share * 100).toFixed(0)}%`))));
  } else {
    out.append(el("p", { class: "error", text: colours.reason.message }));
  }
}

// Item dialog -----------------------------------------------------------------------------------------

function section(id, content) {
  $(id).replaceChildren(...[content].flat());
}

function note(text, isError = false, title = null) {
  return el("p", { class: isError ? "error" : "muted", text, title });
}

// The item's text and facts (shown again after an edit, by curate.js).
function showItemMeta(item) {
  $("item-text").textContent = item.text || "";
  const meta = [];
  if (item.label) meta.push(el("span", { class: "chip", text: `label: ${item.label}` }));
  if (item.collection) meta.push(el("span", { class: "chip", text: item.collection }));
  if (item.width) meta.push(el("span", { class: "chip", text: `${item.width}×${item.height} ${item.image_format || ""}` }));
  for (const [run, c] of Object.entries(item.clusters)) meta.push(el("span", { class: "chip", text: `${run}: cluster ${c}` }));
  for (const tag of item.tags) meta.push(el("span", { class: "chip", text: tag }));
  if (item.excluded) meta.push(el("span", { class: "chip flag", text: "excluded" }));
  section("item-meta", meta);
}

async function openItem(id) {
  const dialog = $("item");
  $("item-title").textContent = id;
  $("item-img").src = `/v1/item/thumbnail?${itemQuery(id)}&size=768`;
  $("item-img").alt = id;
  for (const s of ["item-text", "item-sentence"]) $(s).textContent = "";
  for (const s of ["item-meta", "item-palette", "item-predictions", "item-keywords", "item-neighbours"]) section(s, note("loading…"));
  if (!dialog.open) dialog.showModal();

  api(`/v1/item?${itemQuery(id)}`).then((item) => {
    showCuration(item);
    showItemMeta(item);
    section("item-palette", item.palette.length
      ? [paletteStrip(item.palette), el("div", { class: "palette-legend" }, item.palette.map((p) =>
        el("span", { class: "chip" }, swatch(p.hex), `${p.css} ${p.hex} ${(p.share * 100).toFixed(0)}%`)))]
      : note("no palette computed for this item"));
  }).catch((e) => section("item-meta", note(e.message, true)));

  Promise.all(classifiers.map((m) => postJson(`/v1/predict/${encodeURIComponent(m.name)}`, { images: [{ item: id }] })
    .then((r) => el("div", { class: "model" }, el("div", { class: "model-name", text: `${m.name} (${m.task}: ${m.target})` }),
      el("div", { class: "big", text: r.results[0].prediction || (r.results[0].tags || []).join(", ") || "—" }),
      bars(r.results[0].scores || {})))
    .catch((e) => el("div", { class: "model" }, el("div", { class: "model-name", text: m.name }), note(e.message, true)))))
    .then((blocks) => section("item-predictions", blocks.length ? blocks : note("no trained model in this workspace")));

  postJson("/v1/describe/items", { ids: [id], top_k: 10 }).then((r) => {
    const d = r.results[0];
    section("item-keywords", d.keywords.length
      ? d.keywords.map((k) => el("span", { class: "chip", title: `${k.source || ""} ${k.score.toFixed(2)}`, text: k.keyword }))
      : note(d.error || "no keywords"));
    $("item-sentence").textContent = d.sentence || "";
  }).catch((e) => section("item-keywords", note(unavailable(e), e.status !== 409, e.message)));

  api(`/v1/search/item?${itemQuery(id)}&k=12`).then((r) => {
    section("item-neighbours", r.results.length ? r.results.map((h) => card({ ...h, colour: null }, h.score, false))
      : note("no neighbours"));
  }).catch((e) => section("item-neighbours", note(unavailable(e), e.status !== 409, e.message)));
}

// Drop zones and start-up ----------------------------------------------------------------------------

function dropZone(zone, input, onFile) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) onFile(file);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") input.click();
  });
  input.addEventListener("change", () => {
    if (input.files[0]) onFile(input.files[0]);
    input.value = "";
  });
}

function start() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("search-text").value.trim();
    if (text) searchText(text);
    else {
      view.query = "";
      loadItems(false);
    }
  });
  $("back").addEventListener("click", () => {
    view.query = "";
    $("search-text").value = "";
    loadItems(false);
  });
  $("more").addEventListener("click", () => loadItems(true));
  $("item-close").addEventListener("click", () => $("item").close());
  $("item").addEventListener("click", (event) => {
    if (event.target === $("item")) $("item").close(); // a click on the backdrop
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    // The server checks the key and answers with an HttpOnly cookie; the page never stores the key.
    api("/v1/session", { method: "POST", headers: { "X-API-Key": key } }).then(() => {
      $("key-input").value = "";
      $("key-banner").hidden = true;
      boot();
    }, () => { $("key-banner").hidden = false; });
  });
  dropZone($("search-drop"), $("search-file"), searchImage);
  dropZone($("classify-drop"), $("classify-file"), classify);
  bindFilters();
  boot();
}

function boot() {
  loadFacets();
  loadModels();
  loadItems(false);
}

document.addEventListener("DOMContentLoaded", start);
