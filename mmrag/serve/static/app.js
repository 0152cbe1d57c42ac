// mmrag web page: plain JavaScript, no build step. Talks to the JSON API of the same server.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function setStatus(id, msg, isError = false) {
  const s = $(id);
  s.textContent = msg || "";
  s.classList.toggle("error", !!isError);
  s.setAttribute("role", isError ? "alert" : "status");
}

async function api(path, options = {}) {
  let resp;
  try {
    resp = await fetch(path, options);
  } catch (e) {
    throw new Error("the server cannot be reached (" + e.message + ")");
  }
  const type = resp.headers.get("content-type") || "";
  const body = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) {
    let msg = body && body.detail !== undefined ? body.detail : body;
    if (body && body.error && body.error.message) msg = body.error.message;
    if (Array.isArray(msg)) msg = msg.map((d) => (d.loc ? d.loc.slice(1).join(".") + ": " : "") + d.msg).join("; ");
    throw new Error(`${resp.status}: ${msg}`);
  }
  return body;
}

const postJSON = (path, data) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });

async function busy(button, fn) {
  button.disabled = true;
  try { return await fn(); } finally { button.disabled = false; }
}

// ------------------------------------------------------------------ tabs (arrow keys move between them)
function setupTabs(features) {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const t of tabs) {
    const f = t.dataset.feature;
    if (f && !features[f]) t.hidden = true;
  }
  const visible = () => tabs.filter((t) => !t.hidden);
  function select(tab, focus = true) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
  }
  for (const t of tabs) {
    t.addEventListener("click", () => select(t));
    t.addEventListener("keydown", (ev) => {
      const v = visible();
      let i = v.indexOf(t);
      if (ev.key === "ArrowRight") i = (i + 1) % v.length;
      else if (ev.key === "ArrowLeft") i = (i - 1 + v.length) % v.length;
      else if (ev.key === "Home") i = 0;
      else if (ev.key === "End") i = v.length - 1;
      else return;
      ev.preventDefault();
      select(v[i]);
    });
  }
}

// ------------------------------------------------------------------ result cards
function hitCard(hit, extra = {}) {
  const ocr = hit.metadata && typeof hit.metadata.ocr_text === "string" ? hit.metadata.ocr_text.split(/\s+/).join(" ").trim() : "";
  const caption = hit.caption || (hit.captions && hit.captions[0]) || (ocr ? `text in image: ${ocr}` : "");
  // hybrid and keyword scores are rank-fusion / BM25 values, not similarities
  const label = extra.mode === "hybrid" ? "fused" : extra.mode === "keyword" ? "keyword" : "similarity";
  const meta = el("div", { class: "meta" },
    el("span", { class: "score", text: `${label} ${Number(hit.score).toFixed(3)}` }),
    // calibrated probability that the image matches the text (text searches only)
    typeof hit.relevance === "number" ? el("span", { class: "relevance", text: `match ${Math.round(100 * hit.relevance)} %` }) : null,
    extra.move || null,
    el("span", { class: "caption", text: caption }),
  );
  if (extra.onSimilar) {
    meta.append(el("button", { type: "button", class: "secondary", text: "More like this",
      "aria-label": `Find images like: ${caption || hit.image_id}`, onclick: () => extra.onSimilar(hit) }));
  }
  return el("li", { "data-id": hit.id, class: extra.dimmed ? "dimmed" : null },
    el("a", { href: hit.image_url, target: "_blank", rel: "noopener", "aria-label": `Open image: ${caption || hit.image_id}` },
      el("img", { src: hit.thumbnail_url, alt: caption || hit.image_id, loading: "lazy" })),
    meta);
}

function renderHits(listId, hits, extra = {}) {
  const list = $(listId);
  list.replaceChildren(...hits.map((h) => hitCard(h, typeof extra === "function" ? extra(h) : extra)));
}

// ------------------------------------------------------------------ search
function parseFilter(text) {
  const out = {};
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const i = part.indexOf("=");
    if (i <= 0) throw new Error(`filter "${part}" is not key=value`);
    const key = part.slice(0, i).trim();
    const raw = part.slice(i + 1).trim();
    let value = raw;
    if (/^-?\d+(\.\d+)?$/.test(raw)) value = Number(raw);
    else if (raw === "true" || raw === "false") value = raw === "true";
    out[key] = value;
  }
  return Object.keys(out).length ? out : null;
}

async function runSearch(query) {
  const button = $("#search-submit");
  setStatus("#search-status", "Searching…");
  try {
    const res = await busy(button, () => query());
    const what = res.target === "captions" ? "captions" : "images";
    const how = res.mode && res.mode !== "vector" ? ` (${res.mode} search)` : "";
    setStatus("#search-status", `${res.results.length} ${what} in ${res.took_ms.toFixed(0)} ms${how}`);
    // the server says when no image is a likely match; the closest ones are still shown below
    $("#search-nomatch").hidden = res.no_good_match !== true;
    renderHits("#search-results", res.results, { onSimilar: searchSimilar, mode: res.mode });
    showClarify(res);
  } catch (e) {
    $("#search-results").replaceChildren();  // old results under a new error would read as its answer
    $("#search-nomatch").hidden = true;
    $("#search-clarify").hidden = true;
    setStatus("#search-status", e.message, true);
  }
}

// ------------------------------------------------------------------ ask when unsure
// The server offers a question when the top results are close; each answer lists the results in
// their new order, so a click re-ranks the page without another search.
const clarify = { res: null, text: "" };
const capitalize = (t) => t.charAt(0).toUpperCase() + t.slice(1);

function showClarify(res) {
  const c = res.clarify;
  clarify.res = c ? res : null;
  $("#search-clarify").hidden = !c;
  if (!c) return;
  $("#search-clarify-question").textContent = `The top results are close. ${capitalize(c.question)}`;
  $("#search-clarify-options").replaceChildren(...c.options.map((o) => el("button", {
    type: "button", class: "secondary", "data-answer": o.answer, "aria-pressed": "false",
    text: capitalize(o.answer), onclick: () => applyClarify(o) })));
  $("#search-clarify-chat").hidden = $("#tab-chat").hidden;
}

function applyClarify(option) {
  const res = clarify.res;
  if (!res) return;
  const byId = new Map(res.results.map((h) => [h.id, h]));
  const kept = new Set(option.kept_ids);
  const hits = option.hit_ids.map((i) => byId.get(i)).filter(Boolean);
  renderHits("#search-results", hits, (h) => ({ onSimilar: searchSimilar, mode: res.mode, dimmed: !kept.has(h.id) }));
  for (const b of document.querySelectorAll("#search-clarify-options [data-answer]")) {
    b.setAttribute("aria-pressed", b.dataset.answer === option.answer ? "true" : "false");
  }
  setStatus("#search-status", `Re-ranked for “${option.answer}”: ${option.kept_ids.length} of ${hits.length} results fit it (the others are dimmed)`);
}

async function clarifyToChat() {
  const text = clarify.text;
  if (!text) return;
  $("#tab-chat").click();
  $("#chat-description").value = text;
  $("#chat-start-form").requestSubmit();
}

function searchSimilar(hit) {
  $("#search-text").value = "";
  const k = Number($("#search-k").value) || 20;
  runSearch(() => postJSON("/api/search", { image_id: hit.image_id, k }));
  $("#search-status").scrollIntoView({ block: "nearest" });
}

function setupSearch() {
  const weight = $("#search-weight");
  weight.addEventListener("input", () => { $("#search-weight-out").value = Number(weight.value).toFixed(2); });
  $("#search-clear").addEventListener("click", () => { $("#search-image").value = ""; });
  $("#search-clarify-chat").addEventListener("click", clarifyToChat);
  $("#search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("#search-text").value.trim();
    const file = $("#search-image").files[0];
    if (!text && !file) { setStatus("#search-status", "Type a description or choose an image.", true); return; }
    let filter;
    try { filter = parseFilter($("#search-filter").value); } catch (e) { setStatus("#search-status", e.message, true); return; }
    const k = Number($("#search-k").value) || 20;
    const target = $("#search-target").value;
    const mode = $("#search-mode").value;
    if (file) {
      const form = new FormData();
      form.append("image", file);
      if (text) form.append("text", text);
      form.append("weight", weight.value);
      form.append("k", String(k));
      form.append("target", target);
      form.append("mode", mode);
      if (filter) form.append("filter", JSON.stringify(filter));
      runSearch(() => api("/api/search/upload", { method: "POST", body: form }));
    } else {
      clarify.text = text;
      runSearch(() => postJSON("/api/search", { text, k, target, filter, mode, clarify: true }));
    }
  });
}

// ------------------------------------------------------------------ caption
function evidenceList(items) {
  return el("ol", { class: "evidence", "aria-label": "Evidence" }, ...items.map((e) => el("li", {},
    e.thumbnail_url ? el("img", { src: e.thumbnail_url, alt: (e.texts && e.texts[0]) || e.text || e.id || "" }) : null,
    el("div", {},
      el("div", { class: "score", text: `similarity ${Number(e.score ?? e.similarity).toFixed(3)}` + (e.image_id || e.id ? ` · ${e.image_id || e.id}` : "") }),
      ...(e.texts ? e.texts.map((t) => el("div", { text: t })) : [el("div", { text: e.text })])))));
}

function setupCaption() {
  $("#caption-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = $("#caption-image").files[0];
    if (!file) { setStatus("#caption-status", "Choose an image.", true); return; }
    const form = new FormData();
    form.append("image", file);
    setStatus("#caption-status", "Captioning…");
    try {
      const res = await busy($("#caption-submit"), () => api("/api/caption", { method: "POST", body: form }));
      setStatus("#caption-status", `Captioned in ${res.took_ms.toFixed(0)} ms (${res.generator})`);
      const ev10 = res.evidence.slice(0, 10).map((e) => ({ ...e, thumbnail_url: `/thumbnails/${encodeURIComponent(e.image_id)}` }));
      $("#caption-result").replaceChildren(
        el("p", { class: "answer", id: "caption-text", text: res.caption }),
        el("h3", { text: "Retrieved captions (evidence)" }), evidenceList(ev10));
    } catch (e) {
      setStatus("#caption-status", e.message, true);
      $("#caption-result").replaceChildren();  // old results under a new error would read as its answer
    }
  });
}

// ------------------------------------------------------------------ chat
const chat = { id: null, ranks: new Map() };

function showTurn(turn) {
  const prev = chat.ranks;
  chat.ranks = new Map(turn.hits.map((h, i) => [h.id, i + 1]));
  renderHits("#chat-results", turn.hits, (h) => {
    const now = chat.ranks.get(h.id);
    if (!prev.size) return {};
    const before = prev.get(h.id);
    let text = "new", cls = "move up";
    if (before !== undefined) {
      const d = before - now;
      text = d > 0 ? `▲ ${d}` : d < 0 ? `▼ ${-d}` : "=";
      cls = d > 0 ? "move up" : d < 0 ? "move down" : "move";
    }
    return { move: el("span", { class: cls, text, "aria-label": `rank change ${text}` }) };
  });
  const q = turn.question;
  $("#chat-question").textContent = q ? q : "No more questions: type anything else you know about the image";
  setStatus("#chat-status", `Round ${turn.round}: ${turn.hits.length} candidates` + (q ? "" : " (the questioner has nothing left to ask)"));
  $("#chat-dialog").hidden = false;
  $("#chat-send").disabled = !q;
  // one-click answers: the options and "neither" for a choice question, else yes / no
  const quick = turn.question_options ? [...turn.question_options, "neither"] : ["yes", "no"];
  $("#chat-quick").replaceChildren(...quick.map((a) => el("button", {
    type: "button", class: "secondary", "data-answer": a, text: a.charAt(0).toUpperCase() + a.slice(1) })));
  for (const b of document.querySelectorAll("#chat-answer-form [data-answer]")) b.disabled = !q;
  if (q) $("#chat-answer").focus();
}

function logLine(text) { $("#chat-log").append(el("li", { text })); }

async function chatAnswer(answer) {
  if (!chat.id) return;
  const question = $("#chat-question").textContent;
  setStatus("#chat-status", "Re-ranking…");
  try {
    const turn = await busy($("#chat-send"), () => postJSON(`/api/chat/sessions/${chat.id}/answer`, { answer }));
    logLine(`Q: ${question} — A: ${answer}`);
    $("#chat-answer").value = "";
    showTurn(turn);
  } catch (e) {
    setStatus("#chat-status", e.message, true);
  }
}

function setupChat() {
  $("#chat-start-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const description = $("#chat-description").value.trim();
    if (!description) return;
    setStatus("#chat-status", "Starting…");
    try {
      const turn = await busy($("#chat-start"), () => postJSON("/api/chat/sessions", { description }));
      chat.id = turn.session_id;
      chat.ranks = new Map();
      $("#chat-log").replaceChildren(el("li", { text: `Description: ${description}` }));
      showTurn(turn);
    } catch (e) {
      setStatus("#chat-status", e.message, true);
    }
  });
  $("#chat-answer-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const a = $("#chat-answer").value.trim();
    if (a) chatAnswer(a);
  });
  $("#chat-quick").addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-answer]");
    if (b && !b.disabled) chatAnswer(b.dataset.answer);
  });
}

// ------------------------------------------------------------------ ask
function setupAsk() {
  $("#ask-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = $("#ask-image").files[0];
    const question = $("#ask-question").value.trim();
    if (!file || !question) { setStatus("#ask-status", "Choose an image and type a question.", true); return; }
    const form = new FormData();
    form.append("image", file);
    form.append("question", question);
    setStatus("#ask-status", "Thinking…");
    try {
      const res = await busy($("#ask-submit"), () => api("/api/ask", { method: "POST", body: form }));
      setStatus("#ask-status", `Answered by ${res.answerer} in ${(res.seconds * 1000).toFixed(0)} ms`);
      $("#ask-result").replaceChildren(
        el("p", { class: "answer", id: "ask-answer", text: res.answer }),
        el("h3", { text: "Evidence: similar images" }), evidenceList(res.evidence));
    } catch (e) {
      setStatus("#ask-status", e.message, true);
      $("#ask-result").replaceChildren();  // old results under a new error would read as its answer
    }
  });
}

// ------------------------------------------------------------------ compose
function setupCompose() {
  $("#compose-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("#compose-text").value.trim();
    if (!text) return;
    setStatus("#compose-status", "Composing…");
    try {
      const res = await busy($("#compose-submit"), () => postJSON("/api/compose", { query: text }));
      const nodes = res.blocks.map((b) => {
        if (b.type === "image") {
          const cap = (b.caption || "") + (b.score !== undefined && b.score !== null ? ` (relevance ${Number(b.score).toFixed(2)})` : "");
          return el("figure", {}, el("img", { src: b.image_url, alt: b.caption || b.image_id }), el("figcaption", { text: cap }));
        }
        if (b.type === "heading") return el(b.level <= 1 ? "h2" : "h3", { text: b.text });
        return el("p", { text: b.text });
      });
      $("#compose-result").replaceChildren(...nodes);
      const n = res.blocks.filter((b) => b.type === "image").length;
      setStatus("#compose-status", `${n} image${n === 1 ? "" : "s"} placed`);
    } catch (e) {
      setStatus("#compose-status", e.message, true);
      $("#compose-result").replaceChildren();  // old results under a new error would read as its answer
    }
  });
}

// ------------------------------------------------------------------ start
async function main() {
  setupSearch(); setupCaption(); setupChat(); setupAsk(); setupCompose();
  try {
    const h = await api("/healthz");
    $("#index-info").textContent = `${h.index}: ${h.images} images, ${h.captions} captions (${h.encoder})`;
    if (h.features.max_k) $("#search-k").max = String(h.features.max_k);
    if (h.features.default_k) $("#search-k").value = String(h.features.default_k);
    setupTabs(h.features);
  } catch (e) {
    $("#index-info").textContent = "server unreachable: " + e.message;
    setupTabs({});
  }
  document.body.dataset.ready = "true";
}

main();
