// Tasks: the recent tasks and a search of their text, and the timeline of one task, workspace
// or session, following new entries as they are stored. Filters and the subject live in the
// address, so a view can be shared. Entry text is only ever set with textContent.
"use strict";

import { ApiError, failure, getJson, authHeaders, rememberToken } from "./api.js";
import { formatTime, isoToLocal, link, localToIso, plural, writeJson } from "./format.js";

const TYPES = {
  chat_message: "Chat message",
  execution_step: "Execution step",
  agent_turn: "Agent turn",
  setup_complete: "Setup complete",
  error: "Error",
  status_change: "Status change",
};
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 10000;
// Workspaces and sessions have no live stream: they are read again this often.
const POLL_MS = 5000;
// How close to the end of the page counts as reading the newest entries.
const NEAR_BOTTOM_PX = 80;
const SUBJECTS = {
  task: { path: "tasks", name: "Task" },
  workspace: { path: "workspaces", name: "Workspace" },
  session: { path: "sessions", name: "Session" },
};

const $ = (id) => document.getElementById(id);
const els = {
  pick: $("pick"),
  task: $("task"),
  subject: $("subject"),
  subjectText: $("subject-text"),
  recent: $("recent"),
  recentRows: $("recent-rows"),
  recentMore: $("recent-more"),
  recentState: $("recent-state"),
  search: $("search"),
  searchText: $("search-text"),
  filters: $("filters"),
  since: $("since"),
  until: $("until"),
  text: $("text"),
  clearTimes: $("clear-times"),
  countsTotal: $("counts-total"),
  state: $("state"),
  history: $("history"),
  timeline: $("timeline"),
  shown: $("shown"),
  more: $("more"),
  newBelow: $("new-below"),
  live: $("live"),
  liveText: $("live-text"),
  tokenBox: $("token-box"),
  token: $("token"),
  template: $("entry-template"),
};

const params = new URLSearchParams(window.location.search);
const pageSize = clamp(Number.parseInt(params.get("limit") || "50", 10) || 50, 1, 500);

// Everything about the subject on screen; replaced whole when the subject or filters change.
let view = null;
// The recent tasks on screen, or a search of them.
let listing = null;
// Set while the page scrolls itself, so that its own scrolling is not taken for the reader's.
let scrollingItself = false;

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

// --- The address ------------------------------------------------------------------------------

function subjectOf(search) {
  for (const kind of Object.keys(SUBJECTS)) {
    const id = search.get(kind);
    if (id !== null) return { kind, id: id.trim() };
  }
  return null;
}

function currentFilters() {
  const types = Array.from(els.filters.querySelectorAll('input[name="type"]:checked'), (box) => box.value);
  return {
    types,
    since: localToIso(els.since.value),
    until: localToIso(els.until.value),
    q: els.text.value.trim(),
  };
}

// The subject and filters into the address (replacing it: one history step per subject).
function writeAddress(subject, filters) {
  const url = new URL(window.location.href);
  for (const kind of [...Object.keys(SUBJECTS), "type", "since", "until", "q", "view"]) {
    url.searchParams.delete(kind);
  }
  if (subject) {
    url.searchParams.set(subject.kind, subject.id);
    if (filters.types.length < Object.keys(TYPES).length) {
      for (const type of filters.types) url.searchParams.append("type", type);
    }
    if (filters.since) url.searchParams.set("since", filters.since);
    if (filters.until) url.searchParams.set("until", filters.until);
    if (filters.q) url.searchParams.set("q", filters.q);
  }
  window.history.replaceState(null, "", url);
}

// The filters the address holds, into the form.
function readAddress() {
  const types = params.getAll("type").filter((type) => type in TYPES);
  for (const box of els.filters.querySelectorAll('input[name="type"]')) {
    box.checked = !types.length || types.includes(box.value);
  }
  els.since.value = isoToLocal(params.get("since"));
  els.until.value = isoToLocal(params.get("until"));
  els.text.value = params.get("q") || "";
  els.searchText.value = "";
}

// --- What the page says -------------------------------------------------------------------

function say(text, tone) {
  els.state.textContent = text;
  els.state.dataset.tone = tone || "info";
  els.state.hidden = !text;
}

export function sayLive(text, tone) {
  els.live.hidden = !text;
  els.live.dataset.tone = tone || "";
  els.liveText.textContent = text || "";
}

function explain(error, where = say) {
  switch (error.kind) {
    case "unauthorized":
      els.tokenBox.open = true;
      if (els.token.value.trim()) {
        where("The server refused this access token. Check it, then press Show history.", "error");
      } else {
        where("This server needs an access token: enter it under Access token, then press Show history.", "error");
      }
      break;
    case "not-found":
      where(`There is no ${view ? SUBJECTS[view.subject.kind].name.toLowerCase() : "task"} with that id: check it.`, "error");
      break;
    case "bad-request":
      where(`The server did not accept the request${error.detail ? `: ${error.detail}` : "."}`, "error");
      break;
    case "unreachable":
      where("The server does not answer. Check that it is running, then press Show history.", "error");
      break;
    default:
      where(`The server failed to answer (HTTP ${error.status})${error.detail ? `: ${error.detail}` : "."}`, "error");
  }
}

// --- Recent tasks -------------------------------------------------------------------------

function sayRecent(text, tone) {
  els.recentState.textContent = text;
  els.recentState.dataset.tone = tone || "info";
  els.recentState.hidden = !text;
}

async function showRecent(q) {
  const current = { q, next: null, abort: new AbortController(), found: 0, examined: 0 };
  if (listing) listing.abort.abort();
  listing = current;
  els.recent.hidden = false;
  els.recentRows.replaceChildren();
  els.recentMore.hidden = true;
  els.searchText.value = q;
  sayRecent(q ? `Searching for “${q}”…` : "Loading…", "busy");
  await loadRecent(current);
}

// A search looks at a bounded number of tasks per request; it asks again by itself, up to
// this many requests, while it has found fewer than a page of tasks.
const SEARCH_REQUESTS = 25;

async function loadRecent(current) {
  let page;
  let requests = 0;
  let gathered = 0;
  do {
    const query = new URLSearchParams({ limit: "50" });
    if (current.q) query.set("q", current.q);
    if (current.next) query.set("after", current.next);
    try {
      page = await getJson(`/tasks?${query}`, current.abort.signal);
    } catch (error) {
      if (error.name === "AbortError" || listing !== current) return;
      explain(error, sayRecent);
      return;
    }
    if (listing !== current) return;
    requests += 1;
    for (const task of page.tasks) els.recentRows.append(taskRow(task, current.q));
    current.next = page.next;
    current.found += page.tasks.length;
    gathered += page.tasks.length;
    current.examined += page.examined;
    if (current.q && page.next) {
      sayRecent(`Searching for “${current.q}”: ${plural(current.found, "task")} found, ${plural(current.examined, "task")} looked at…`, "busy");
    }
  } while (current.q && page.next && gathered < 50 && requests < SEARCH_REQUESTS);
  els.recentMore.hidden = !page.next;
  els.recentMore.textContent = current.q ? "Search further" : "More tasks";
  if (current.q) {
    const looked = `${plural(current.examined, "task")} looked at, most recently active first`;
    sayRecent(
      page.next
        ? `${plural(current.found, "task")} with “${current.q}” so far; ${looked}.`
        : `${plural(current.found, "task")} with “${current.q}”; every task was looked at.`,
      current.found ? "info" : "empty",
    );
  } else {
    sayRecent(current.found ? "" : "No task has any entries yet.", "empty");
  }
}

function taskRow(task, q) {
  const row = document.createElement("tr");
  row.dataset.task = task.task_id;
  const name = document.createElement("td");
  const address = new URLSearchParams({ task: task.task_id });
  if (q) address.set("q", q);
  const anchor = document.createElement("a");
  anchor.href = `/?${address}`;
  anchor.textContent = task.task_id;
  anchor.className = "mono";
  name.append(anchor);
  const entries = cell(String(task.entries), "num");
  const errors = cell(String(task.errors), task.errors ? "num errors" : "num");
  const when = document.createElement("td");
  const time = document.createElement("time");
  time.dateTime = task.last_activity;
  time.title = task.last_activity;
  time.textContent = formatTime(task.last_activity);
  when.append(time);
  row.append(name, entries, errors, when);
  return row;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// --- The timeline -------------------------------------------------------------------------

function matches(filters, entry, { ignoreTypes = false } = {}) {
  if (!ignoreTypes && !filters.types.includes(entry.context_type)) return false;
  const at = Date.parse(entry.created_at);
  if (filters.since && at < Date.parse(filters.since)) return false;
  if (filters.until && at >= Date.parse(filters.until)) return false;
  if (filters.q && !foldAscii(String(entry.content)).includes(foldAscii(filters.q))) return false;
  return true;
}

// Text compared as the server compares it: A to Z in any case, every other character as is.
function foldAscii(text) {
  return text.replace(/[A-Z]+/g, (letters) => letters.toLowerCase());
}

// created_at as a number that keeps microseconds, for ordering like the server does.
function timeKey(iso) {
  const fraction = /\.(\d+)/.exec(iso);
  const micros = fraction ? Number.parseInt(fraction[1].padEnd(6, "0").slice(3, 6), 10) : 0;
  return Date.parse(iso) * 1000 + micros;
}

function idCell(dd, kind, id) {
  if (!id) {
    dd.textContent = "none";
    return;
  }
  if (view && view.subject.kind === kind && view.subject.id.toLowerCase() === id.toLowerCase()) {
    dd.textContent = id;
    return;
  }
  const anchor = document.createElement("a");
  anchor.href = `/?${new URLSearchParams({ [kind]: id })}`;
  anchor.textContent = id;
  dd.append(anchor);
}

function render(entry) {
  const item = els.template.content.firstElementChild.cloneNode(true);
  item.classList.add(`type-${entry.context_type}`);
  item.dataset.id = entry.id;
  item.dataset.type = entry.context_type;
  item.querySelector(".badge").textContent = TYPES[entry.context_type] || entry.context_type;
  const when = item.querySelector(".when");
  when.dateTime = entry.created_at;
  when.title = entry.created_at;
  when.textContent = formatTime(entry.created_at);
  item.querySelector(".content").textContent = entry.content;
  item.querySelector(".id-entry").textContent = entry.id;
  idCell(item.querySelector(".id-task"), "task", entry.task_id);
  idCell(item.querySelector(".id-workspace"), "workspace", entry.workspace_id);
  idCell(item.querySelector(".id-session"), "session", entry.session_id);
  item.querySelector(".id-expires").textContent = formatTime(entry.expires_at);
  const metadata = entry.metadata && Object.keys(entry.metadata).length ? entry.metadata : null;
  const pre = item.querySelector(".metadata");
  const summary = item.querySelector("summary");
  if (metadata) {
    const fields = Object.keys(metadata).length;
    summary.textContent = `Metadata (${fields} field${fields === 1 ? "" : "s"})`;
    writeJson(pre, metadata);
  } else {
    summary.textContent = "Details";
    pre.remove();
  }
  return item;
}

function nearBottom() {
  const page = document.documentElement;
  return window.innerHeight + window.scrollY >= page.scrollHeight - NEAR_BOTTOM_PX;
}

// Adds entries not on screen yet, each in its place by created_at (ties: the order they came).
// Live ones count toward the kinds' totals, and the newest is brought into view unless the
// reader has scrolled away from the end.
function merge(entries, { live = false } = {}) {
  let added = 0;
  let newest = null;
  for (const entry of entries) {
    if (view.byId.has(entry.id)) continue;
    if (live && matches(view.filters, entry, { ignoreTypes: true }) && view.totals) {
      view.totals[entry.context_type] = (view.totals[entry.context_type] || 0) + 1;
    }
    if (!matches(view.filters, entry)) continue;
    const key = timeKey(entry.created_at);
    const item = render(entry);
    if (live) item.classList.add("arrived");
    let index = view.keys.length;
    while (index > 0 && view.keys[index - 1] > key) index -= 1;
    els.timeline.insertBefore(item, els.timeline.children[index] || null);
    view.keys.splice(index, 0, key);
    view.byId.set(entry.id, entry);
    if (index === view.keys.length - 1) newest = item;
    added += 1;
  }
  if (live) showTotals();
  if (added) showCounts();
  if (live && newest) bringIntoView(newest);
  return added;
}

function bringIntoView(item) {
  if (view.following) {
    scrollingItself = true;
    item.scrollIntoView({ block: "end" });
    requestAnimationFrame(() => {
      scrollingItself = false;
    });
    return;
  }
  view.unseen += 1;
  els.newBelow.textContent = `${plural(view.unseen, "new entry", "new entries")} below`;
  els.newBelow.hidden = false;
}

function showCounts() {
  const total = view.byId.size;
  els.shown.textContent = `(${total} shown)`;
  if (total) {
    say("");
  } else {
    const filtered = view.filters.since || view.filters.until || view.filters.q || view.filters.types.length < 6;
    say(
      filtered
        ? "No entries match these filters. New ones that match will appear here."
        : `No entries for this ${SUBJECTS[view.subject.kind].name.toLowerCase()} yet. If the id is right, new ones will appear here as they are stored.`,
      "empty",
    );
  }
}

// The kinds' counts over every entry of the subject (not only those loaded), as the server
// counts them with the time and text filters.
function showTotals() {
  const totals = view && view.totals;
  for (const slot of document.querySelectorAll("[data-count]")) {
    const count = totals ? totals[slot.dataset.count] || 0 : 0;
    slot.textContent = totals ? `${count}` : "";
  }
  if (!totals) {
    els.countsTotal.textContent = "";
    return;
  }
  const all = Object.values(totals).reduce((sum, n) => sum + n, 0);
  const shown = view.filters.types.reduce((sum, type) => sum + (totals[type] || 0), 0);
  els.countsTotal.textContent = `${plural(all, "entry", "entries")} in all; ${shown.toLocaleString()} of the kinds ticked.`;
}

function subjectUrl(subject, tail = "history") {
  return `/${SUBJECTS[subject.kind].path}/${encodeURIComponent(subject.id)}/${tail}`;
}

function historyUrl(current, extra) {
  const filters = current.filters;
  const query = new URLSearchParams();
  query.set("limit", String(extra.limit || pageSize));
  if (extra.after) query.set("after", extra.after);
  if (extra.newestFirst) query.set("newest_first", "true");
  // All six ticked is the same as no type filter: leave it out.
  if (filters.types.length < Object.keys(TYPES).length) {
    for (const type of filters.types) query.append("type", type);
  }
  const since = extra.since || filters.since;
  if (since) query.set("since", since);
  if (filters.until) query.set("until", filters.until);
  if (filters.q) query.set("q", filters.q);
  return `${subjectUrl(current.subject)}?${query}`;
}

async function loadTotals(current) {
  const query = new URLSearchParams();
  if (current.filters.since) query.set("since", current.filters.since);
  if (current.filters.until) query.set("until", current.filters.until);
  if (current.filters.q) query.set("q", current.filters.q);
  try {
    const counts = await getJson(`${subjectUrl(current.subject, "history/counts")}?${query}`, current.abort.signal);
    if (view !== current) return;
    current.totals = { ...counts.by_type };
    showTotals();
  } catch (_) {
    // The counts are a help, not the history: the page works without them.
  }
}

// Pages are read newest first, so the first one ends where live entries join it; each
// "Load older" reads the page before, and merge() puts every entry in its place.
async function loadPage(current, after) {
  const page = await getJson(historyUrl(current, { after, newestFirst: true }), current.abort.signal);
  if (view !== current) return;
  merge(page.entries);
  current.next = page.next;
  els.more.hidden = !page.next;
}

function showSubject(subject) {
  els.subject.hidden = false;
  els.subjectText.textContent = `${SUBJECTS[subject.kind].name} ${subject.id}`;
}

export async function start() {
  stop();
  rememberToken();
  const filters = currentFilters();
  const typed = els.task.value.trim();
  let subject = subjectOf(new URLSearchParams(window.location.search));
  if (typed || !subject || subject.kind === "task") subject = typed ? { kind: "task", id: typed } : null;
  writeAddress(subject, filters);
  els.subject.hidden = true;
  if (!subject) {
    els.filters.hidden = true;
    els.history.hidden = true;
    say("Enter a task id to see its history, or pick one of the recent tasks.");
    showRecent("");
    return;
  }
  els.recent.hidden = true;
  if (!UUID_PATTERN.test(subject.id)) {
    const name = SUBJECTS[subject.kind].name.toLowerCase();
    say(`“${subject.id}” is not a ${name} id: a ${name} id is a UUID such as 3f0c9a2e-5b1d-4c8e-9a6f-2d7b1e4c0a11.`, "error");
    return;
  }
  els.filters.hidden = false;
  if (subject.kind !== "task") showSubject(subject);
  if (!filters.types.length) {
    say("Tick at least one kind of entry to see any.", "empty");
    return;
  }
  const current = {
    subject,
    filters,
    abort: new AbortController(),
    byId: new Map(),
    keys: [],
    totals: null,
    next: null,
    lastEventId: "",
    following: true,
    unseen: 0,
  };
  view = current;
  els.timeline.replaceChildren();
  els.timeline.setAttribute("aria-busy", "true");
  els.more.hidden = true;
  els.newBelow.hidden = true;
  els.shown.textContent = "";
  showTotals();
  say("Loading…", "busy");
  const totals = loadTotals(current);
  try {
    await loadPage(current, null);
  } catch (error) {
    if (error.name === "AbortError" || view !== current) return;
    els.history.hidden = true;
    explain(error);
    return;
  } finally {
    els.timeline.removeAttribute("aria-busy");
  }
  els.history.hidden = false;
  showCounts();
  await totals;
  if (subject.kind === "task") follow(current);
  else poll(current);
}

export function stop() {
  if (view) view.abort.abort();
  view = null;
  sayLive("");
}

async function loadOlder() {
  const current = view;
  if (!current || !current.next) return;
  els.more.disabled = true;
  try {
    await loadPage(current, current.next);
  } catch (error) {
    if (error.name !== "AbortError" && view === current) explain(error);
  } finally {
    els.more.disabled = false;
  }
}

// Read what was stored since the newest entry on screen, so nothing committed while the page
// was not listening is missed.
async function catchUp(current) {
  let since = current.filters.since;
  const newest = newestEntry(current);
  if (newest && (!since || Date.parse(newest.created_at) > Date.parse(since))) {
    since = newest.created_at;
  }
  let after = null;
  do {
    const page = await getJson(historyUrl(current, { since, after, limit: 500 }), current.abort.signal);
    if (view !== current) return;
    merge(page.entries, { live: true });
    after = page.next;
  } while (after);
}

function newestEntry(current) {
  const id = els.timeline.lastElementChild && els.timeline.lastElementChild.dataset.id;
  return id ? current.byId.get(id) : null;
}

// A workspace or session: no stream of its own, so it is read again every few seconds.
async function poll(current) {
  sayLive(`New entries checked every ${POLL_MS / 1000} s`, "on");
  while (view === current && !current.abort.signal.aborted) {
    await sleep(POLL_MS, current.abort.signal);
    if (view !== current) return;
    try {
      await catchUp(current);
      sayLive(`New entries checked every ${POLL_MS / 1000} s`, "on");
    } catch (error) {
      if (current.abort.signal.aborted) return;
      sayLive("Connection lost: trying again…", "lost");
    }
  }
}

// --- Following new entries (Server-Sent Events read with fetch, so the token goes in a header)

async function follow(current) {
  let delay = RETRY_FIRST_MS;
  const signal = current.abort.signal;
  const url = subjectUrl(current.subject, "history/stream");
  while (view === current && !signal.aborted) {
    let response = null;
    try {
      const headers = { Accept: "text/event-stream", ...authHeaders() };
      if (current.lastEventId) headers["Last-Event-ID"] = current.lastEventId;
      response = await fetch(url, { headers, signal, cache: "no-store" });
    } catch (error) {
      if (signal.aborted) return;
      response = null;
    }
    if (response && (response.status === 401 || response.status === 403 || response.status === 404)) {
      sayLive("Not following new entries", "off");
      explain(await failure(response));
      return;
    }
    if (response && response.ok && response.body) {
      delay = RETRY_FIRST_MS;
      sayLive("Live: new entries appear as they are stored", "on");
      try {
        if (!current.lastEventId) await catchUp(current);
        await readEvents(response.body, current, (retry) => {
          delay = retry;
        });
      } catch (error) {
        if (signal.aborted) return;
      } finally {
        // Close the connection whatever ended the reading (a failed catch-up included).
        response.body.cancel().catch(() => {});
      }
    }
    if (view !== current || signal.aborted) return;
    sayLive("Connection lost: reconnecting…", "lost");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, RETRY_MAX_MS);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

// Parses text/event-stream as the HTML standard describes it: fields up to a blank line.
async function readEvents(body, current, setRetry) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let eventName = "";
  let eventId = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const match = /\r\n|\r|\n/.exec(buffer);
      if (!match) break;
      // A lone \r at the very end may be the first half of \r\n: wait for the next chunk.
      if (match[0] === "\r" && match.index === buffer.length - 1) break;
      const line = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      if (line === "") {
        if (eventId !== null) current.lastEventId = eventId;
        if (data.length && (eventName === "" || eventName === "message")) {
          receive(current, data.join("\n"));
        }
        data = [];
        eventName = "";
        eventId = null;
        continue;
      }
      if (line.startsWith(":")) continue; // a comment: the server keeping the line open
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let text = colon === -1 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") data.push(text);
      else if (field === "event") eventName = text;
      else if (field === "id" && !text.includes("\0")) eventId = text;
      else if (field === "retry" && /^\d+$/.test(text)) setRetry(Number.parseInt(text, 10));
    }
  }
}

function receive(current, text) {
  let entry;
  try {
    entry = JSON.parse(text);
  } catch (_) {
    return; // not an entry: nothing to show
  }
  if (view !== current || !entry || typeof entry.id !== "string") return;
  const added = merge([entry], { live: true });
  if (added) els.history.hidden = false;
}

// --- Wiring -------------------------------------------------------------------------------

export function show() {
  readAddress();
  const subject = subjectOf(params);
  els.task.value = subject && subject.kind === "task" ? subject.id : "";
  start();
  if (!subject) els.task.focus();
}

export function wire() {
  els.pick.addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  els.filters.addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  els.filters.addEventListener("change", () => {
    if (view) start();
  });
  els.clearTimes.addEventListener("click", () => {
    els.since.value = "";
    els.until.value = "";
    if (view) start();
  });
  els.more.addEventListener("click", loadOlder);
  els.search.addEventListener("submit", (event) => {
    event.preventDefault();
    rememberToken();
    showRecent(els.searchText.value.trim());
  });
  els.recentMore.addEventListener("click", () => {
    if (listing && listing.next) loadRecent(listing);
  });
  els.newBelow.addEventListener("click", () => {
    if (!view) return;
    view.following = true;
    view.unseen = 0;
    els.newBelow.hidden = true;
    const last = els.timeline.lastElementChild;
    if (last) {
      scrollingItself = true;
      last.scrollIntoView({ block: "end" });
      requestAnimationFrame(() => {
        scrollingItself = false;
      });
      last.querySelector("summary").focus({ preventScroll: true });
    }
  });
  window.addEventListener("scroll", () => {
    if (!view || scrollingItself) return;
    view.following = nearBottom();
    if (view.following) {
      view.unseen = 0;
      els.newBelow.hidden = true;
    }
  }, { passive: true });
}

export { ApiError };
