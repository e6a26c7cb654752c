// curata web page, curation: select items and edit them together, edit one item (with its version, so a
// concurrent edit is refused rather than overwritten) and see its history, and the review queues, driven by
// the keyboard. Uses app.js's helpers ($, el, api, postJson, setStatus, loadItems, openItem, view).
"use strict";

const selection = new Set();
const review = { queue: null, proposals: [], index: 0, done: 0, left: 0, busy: false };
const QUEUE_NAMES = {
  labels: "Suspicious labels", tags: "Tag suggestions", duplicates: "Near-duplicates", outliers: "Outliers",
  uncertain: "Label these next",
};

function show(value) {
  if (Array.isArray(value)) return value.length ? value.join(", ") : "no tags";
  if (value === null || value === undefined || value === "") return "—";
  return String(value);
}

// Selection and bulk edits ---------------------------------------------------------------------------

function selectBox(id) {
  const box = el("input", { type: "checkbox", "aria-label": `select ${id}`, checked: selection.has(id) });
  box.addEventListener("change", () => {
    if (box.checked) selection.add(id);
    else selection.delete(id);
    updateSelectionBar();
  });
  return el("label", { class: "pick", title: "select" }, box);
}

function updateSelectionBar() {
  const scope = $("bulk-scope").value;
  const count = scope === "view" ? (view.mode === "search" ? view.shown.length : view.total) : selection.size;
  $("select-count").textContent = scope === "view" ? `${count} shown` : `${selection.size} selected`;
  $("select-bar").hidden = selection.size === 0 && scope !== "view";
}

// What "everything shown" means for the server: the search hits, the cluster, or the list's filters.
function viewSelection() {
  if (view.mode === "search") return { ids: view.shown };
  if (view.filters.cluster !== undefined && view.filters.cluster !== "") {
    return { cluster: { cluster: Number(view.filters.cluster) } };
  }
  const where = {};
  for (const name of ["label", "collection", "tag"]) if (view.filters[name]) where[name] = view.filters[name];
  if (view.query) where.q = view.query;
  if (view.filters.colour) return null; // colours are derived, not a column: select the items instead
  return Object.keys(where).length ? { where } : null;
}

async function bulkEdit(changes) {
  const target = $("bulk-scope").value === "view" ? viewSelection() : { ids: [...selection] };
  if (!target || (target.ids && !target.ids.length)) {
    setStatus("choose items first (tick them), or a filter, search or cluster to apply to", true);
    return;
  }
  try {
    const done = await postJson("/v1/edits", { ...target, changes, why: "page" });
    selection.clear();
    $("bulk-scope").value = "selected";
    const reload = view.mode === "search" ? Promise.resolve() : loadItems(false);
    await reload;
    updateSelectionBar();
    statusWithUndo(`${done.changed} item${done.changed === 1 ? "" : "s"} changed`, done.batch);
  } catch (e) {
    setStatus(e.message, true);
  }
}

function statusWithUndo(text, batch) {
  setStatus(text);
  if (!batch) return;
  $("status").append(" · ", el("button", { type: "button", class: "link", id: "status-undo", text: "undo",
    onclick: async () => {
      try {
        const undone = await postJson("/v1/edits/undo", { batch });
        if (view.mode !== "search") await loadItems(false);
        setStatus(`undone: ${undone.changed} item${undone.changed === 1 ? "" : "s"} put back`);
      } catch (e) {
        setStatus(e.message, true);
      }
    } }));
}

function bindBulk() {
  const value = (id) => $(id).value.trim();
  $("bulk-set-label").addEventListener("click", () => value("bulk-label") && bulkEdit({ label: value("bulk-label") }));
  $("bulk-add-tag").addEventListener("click", () => value("bulk-tag") && bulkEdit({ add_tags: [value("bulk-tag")] }));
  $("bulk-remove-tag").addEventListener("click", () => value("bulk-tag")
    && bulkEdit({ remove_tags: [value("bulk-tag")] }));
  $("bulk-exclude").addEventListener("click", () => bulkEdit({ excluded: true }));
  $("bulk-scope").addEventListener("change", updateSelectionBar);
  $("bulk-clear").addEventListener("click", () => {
    selection.clear();
    $("bulk-scope").value = "selected";
    for (const box of document.querySelectorAll("#gallery .pick input")) box.checked = false;
    updateSelectionBar();
  });
}

// One item: edit with its version, and its history ---------------------------------------------------

async function editItem(item, changes) {
  try {
    await api("/v1/edits", {
      method: "POST", body: JSON.stringify({ ids: [item.id], changes, why: "page" }),
      headers: { "Content-Type": "application/json", "If-Match": `"v${item.version}"` },
    });
  } catch (e) {
    if (e.status === 409) {
      // Someone else edited the item since this page read it: show their value, keep nothing of ours.
      const fresh = await api(`/v1/item?${itemQuery(item.id)}`);
      showCuration(fresh, "Someone else changed this item meanwhile; this is their version. Nothing was saved.");
      showItemMeta(fresh);
      return;
    }
    section("item-edit", [note(e.message, true)]);
    return;
  }
  const fresh = await api(`/v1/item?${itemQuery(item.id)}`);
  showCuration(fresh, "saved");
  showItemMeta(fresh);
  if (view.mode !== "search" && view.mode !== "review") loadItems(false);
}

function showCuration(item, message = "") {
  const label = el("input", { id: "edit-label", value: item.label || "", "aria-label": "label", autocomplete: "off" });
  const tagInput = el("input", { id: "edit-tag", placeholder: "add a tag", "aria-label": "tag", autocomplete: "off" });
  const save = () => {
    const text = label.value.trim();
    if (text !== (item.label || "")) editItem(item, { label: text || null }); // null: no label
  };
  const addTag = () => tagInput.value.trim() && editItem(item, { add_tags: [tagInput.value.trim()] });
  label.addEventListener("keydown", (event) => event.key === "Enter" && save());
  tagInput.addEventListener("keydown", (event) => event.key === "Enter" && addTag());
  const tags = el("div", { class: "chips" }, item.tags.map((t) => el("span", { class: "chip" }, t,
    el("button", { type: "button", class: "chip-x", "aria-label": `remove ${t}`, text: "×",
      onclick: () => editItem(item, { remove_tags: [t] }) }))));
  const curated = item.curated.length ? `curated: ${item.curated.join(", ")}; the source says ${
    show(item.source_label)}` : "as the source has it";
  section("item-edit", [
    el("div", { class: "edit-row" }, label, el("button", { id: "edit-save", type: "button", text: "Set label",
      onclick: save })),
    tags,
    el("div", { class: "edit-row" }, tagInput, el("button", { type: "button", text: "Add tag", onclick: addTag })),
    el("div", { class: "edit-row" },
      el("button", { id: "edit-exclude", type: "button", class: "quiet", text: item.excluded ? "Include again"
        : "Exclude", onclick: () => editItem(item, { excluded: !item.excluded }) }),
      item.curated.some((f) => f === "label" || f === "tags")
        ? el("button", { type: "button", class: "quiet", text: "Back to the source's values",
          onclick: () => editItem(item, { revert: item.curated.filter((f) => f === "label" || f === "tags") }) })
        : null),
    el("p", { class: "muted", id: "edit-state", text: `${curated} · version ${item.version}` }),
    message ? el("p", { class: ["saved", "undone"].includes(message) ? "muted" : "error", id: "edit-message", text: message }) : null,
  ].filter(Boolean));
  loadHistory(item.id);
}

async function loadHistory(id) {
  try {
    const log = await api(`/v1/edits?${new URLSearchParams({ item: id, limit: 50 })}`);
    section("item-history", log.edits.length ? el("ul", {}, log.edits.map((e) => el("li", {},
      el("span", { class: "muted", text: `${e.at.slice(0, 19).replace("T", " ")} · ${e.who} · ` }),
      `${e.field}: ${show(e.before)} → ${show(e.after)}`,
      e.why ? el("span", { class: "muted", text: ` (${e.why})` }) : null,
      el("button", { type: "button", class: "link undo", text: "undo", onclick: async () => {
        try {
          await postJson("/v1/edits/undo", { edit_ids: [e.edit_id] });
          const fresh = await api(`/v1/item?${itemQuery(id)}`);
          showCuration(fresh, "undone");
          showItemMeta(fresh);
        } catch (err) {
          section("item-history", note(err.message, true));
        }
      } })))) : note("no edits yet"));
  } catch (e) {
    section("item-history", note(e.message, true));
  }
}

// Review queues --------------------------------------------------------------------------------------

function setMode(mode) {
  const reviewing = mode === "review";
  $("mode-review").classList.toggle("active", reviewing);
  $("mode-browse").classList.toggle("active", !reviewing);
  for (const id of ["gallery", "query-image"]) $(id).hidden = reviewing || (id === "query-image");
  $("review").hidden = !reviewing;
  $("more").hidden = true;
  $("select-bar").hidden = true;
  if (reviewing) {
    view.mode = "review";
    $("heading").textContent = "Review";
    loadQueues();
  } else {
    view.mode = "browse";
    loadItems(false);
  }
}

async function loadQueues() {
  // The tabs and the first queue at once; the counts of every queue (which may build them all) when ready.
  const tabs = Object.keys(QUEUE_NAMES).map((name) => el("button", {
    type: "button", role: "tab", class: "chip", "data-queue": name, onclick: () => openQueue(name),
  }, QUEUE_NAMES[name]));
  $("review-queues").replaceChildren(...tabs);
  openQueue(review.queue || "labels");
  try {
    const all = (await api("/v1/review")).queues;
    for (const tab of tabs) {
      const q = all[tab.dataset.queue];
      if (!q) continue;
      tab.textContent = `${QUEUE_NAMES[tab.dataset.queue]} · ${q.left}`;
      tab.title = q.notes.join(" ") || q.source;
    }
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function openQueue(name) {
  review.queue = name;
  for (const tab of $("review-queues").children) tab.classList.toggle("active", tab.dataset.queue === name);
  try {
    const q = await api(`/v1/review/${name}?limit=200`);
    review.proposals = q.proposals;
    review.index = 0;
    review.done = q.done;
    review.left = q.left;
    $("review-notes").textContent = q.notes.join(" ") || (q.source ? `from ${q.source}` : "");
    showProposal();
  } catch (e) {
    setStatus(e.message, true);
  }
}

function describeProposal(p) {
  if (p.field === "label") return `label → ${p.value}`;
  if (p.field === "tags") return `add tag ${p.value}`;
  if (p.field === "duplicate_of") return `duplicate of ${p.value}`;
  return "exclude (an outlier)";
}

function showProposal() {
  const p = review.proposals[review.index];
  $("review-progress").textContent = `${review.done} done · ${review.left} left`;
  $("review-card").hidden = !p;
  if (!p) {
    $("review-notes").textContent = $("review-notes").textContent || "nothing left to review in this queue";
    return;
  }
  const img = $("review-img");
  const src = `/v1/item/thumbnail?${itemQuery(p.item)}&size=768`;
  if (img.getAttribute("src") !== src) {
    // A browser shows the previous image until the next one has loaded: hidden meanwhile, so a proposal is
    // never seen beside another item's picture.
    img.style.visibility = "hidden";
    img.src = src;
  }
  img.alt = p.item;
  $("review-item").textContent = `${review.index + 1} of ${review.proposals.length} · ${p.item}`;
  $("review-proposal").textContent = describeProposal(p);
  $("review-current").textContent = `now: ${show(p.current)}`;
  $("review-source").textContent = `score ${Number(p.score).toFixed(3)} · ${p.source}`;
}

async function decide(decision) {
  const p = review.proposals[review.index];
  if (!p || review.busy) return;
  if (decision === "skip") { // nothing recorded: the next proposal (the last one wraps to the first)
    review.index = (review.index + 1) % review.proposals.length;
    showProposal();
    return;
  }
  review.busy = true;
  try {
    const done = await postJson(`/v1/review/${review.queue}/decisions`, { proposal_id: p.id, decision });
    review.proposals.splice(review.index, 1);
    if (review.index >= review.proposals.length) review.index = Math.max(0, review.proposals.length - 1);
    review.done = done.done;
    review.left = done.left;
    setStatus(`${decision === "accept" ? "accepted" : "rejected"}: ${p.item} ${describeProposal(p)}`);
    showProposal();
  } catch (e) {
    setStatus(e.message, true);
    if (e.status === 409) await openQueue(review.queue); // decided elsewhere or changed: fresh proposals
  } finally {
    review.busy = false;
  }
}

async function undoDecision() {
  if (review.busy || !review.queue) return;
  review.busy = true;
  try {
    const done = await postJson(`/v1/review/${review.queue}/undo`, {});
    setStatus(`undone: ${done.undone.decision} of ${done.undone.item}`);
    await openQueue(review.queue);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    review.busy = false;
  }
}

function onKey(event) {
  if (view.mode !== "review" || $("item").open || event.ctrlKey || event.metaKey || event.altKey) return;
  if (["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement && document.activeElement.tagName)) return;
  const actions = {
    a: () => decide("accept"), r: () => decide("reject"), j: () => decide("skip"), u: undoDecision,
    k: () => {
      review.index = Math.max(0, review.index - 1);
      showProposal();
    },
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

function startCuration() {
  bindBulk();
  $("mode-review").addEventListener("click", () => setMode("review"));
  $("mode-browse").addEventListener("click", () => setMode("browse"));
  $("review-accept").addEventListener("click", () => decide("accept"));
  $("review-reject").addEventListener("click", () => decide("reject"));
  $("review-next").addEventListener("click", () => decide("skip"));
  $("review-prev").addEventListener("click", () => onKey({ key: "k", preventDefault() {} }));
  $("review-undo").addEventListener("click", undoDecision);
  $("review-img").addEventListener("load", () => { $("review-img").style.visibility = "visible"; });
  document.addEventListener("keydown", onKey);
}

document.addEventListener("DOMContentLoaded", startCuration);
