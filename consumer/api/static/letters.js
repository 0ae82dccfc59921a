// Dead letters: how many over time (the chart), which ones (filters in the address, a list a
// page at a time), one whole (body as text or hex, headers, properties), and, for the
// operator's token, replay and purge of a selection or of a filter: a confirmation that says
// how many, the progress, the result. Every replay and purge is on the record shown below.
"use strict";

import { getJson, hasOperatorRoutes, postJson, rememberToken } from "./api.js";
import { caption, draw, legend, table } from "./chart.js";
import { formatTime, hexDump, isoToLocal, localToIso, plural, writeJson } from "./format.js";

const $ = (id) => document.getElementById(id);
const els = {
  chart: $("chart"),
  chartCaption: $("chart-caption"),
  chartLegend: $("chart-legend"),
  chartData: $("chart-data"),
  filters: $("letter-filters"),
  codes: $("codes"),
  task: $("letter-task"),
  key: $("letter-key"),
  text: $("letter-text"),
  since: $("letter-since"),
  until: $("letter-until"),
  clear: $("letters-clear"),
  state: $("letters-state"),
  count: $("letters-count"),
  operate: $("operate"),
  replaySelected: $("replay-selected"),
  purgeSelected: $("purge-selected"),
  replayMatching: $("replay-matching"),
  purgeMatching: $("purge-matching"),
  progressBox: $("progress-box"),
  progress: $("progress"),
  progressLabel: $("progress-label"),
  result: $("result"),
  rows: $("letter-rows"),
  selectAll: $("select-all"),
  more: $("letters-more"),
  letter: $("letter"),
  letterTitle: $("letter-title"),
  letterFields: $("letter-fields"),
  letterOperate: $("letter-operate"),
  replayOne: $("replay-one"),
  purgeOne: $("purge-one"),
  body: $("letter-body"),
  bodyKind: $("body-kind"),
  headers: $("letter-headers"),
  properties: $("letter-properties"),
  actionRows: $("action-rows"),
  actionsMore: $("actions-more"),
  confirm: $("confirm"),
  confirmTitle: $("confirm-title"),
  confirmText: $("confirm-text"),
  confirmGo: $("confirm-go"),
  tokenBox: $("token-box"),
};
const POLL_MS = 250;
const FILTERS = ["error", "task", "routing_key", "q", "since", "until"];

let state = null;

// --- The address and the filters ------------------------------------------------------------

function filtersFromAddress(search) {
  return {
    error: search.getAll("error"),
    task: search.get("task") || "",
    routing_key: search.get("routing_key") || "",
    q: search.get("q") || "",
    since: search.get("since") || "",
    until: search.get("until") || "",
  };
}

function filtersFromForm() {
  return {
    error: Array.from(els.codes.querySelectorAll("input:checked"), (box) => box.value),
    task: els.task.value.trim(),
    routing_key: els.key.value.trim(),
    q: els.text.value.trim(),
    since: localToIso(els.since.value),
    until: localToIso(els.until.value),
  };
}

function fillForm(filters) {
  els.task.value = filters.task;
  els.key.value = filters.routing_key;
  els.text.value = filters.q;
  els.since.value = isoToLocal(filters.since);
  els.until.value = isoToLocal(filters.until);
}

function query(filters, extra = {}) {
  const search = new URLSearchParams();
  for (const code of filters.error) search.append("error", code);
  for (const name of FILTERS.slice(1)) if (filters[name]) search.set(name, filters[name]);
  for (const [name, value] of Object.entries(extra)) if (value !== null && value !== undefined && value !== "") search.set(name, String(value));
  return search;
}

function writeAddress() {
  const search = query(state.filters, { view: "dead-letters", by: state.by === "error" ? "" : state.by, letter: state.letter || "" });
  window.history.replaceState(null, "", `/?${search}`);
}

function isFiltered(filters) {
  return Boolean(filters.error.length || FILTERS.slice(1).some((name) => filters[name]));
}

function describe(filters) {
  const parts = [];
  if (filters.error.length) parts.push(`error ${filters.error.join(" or ")}`);
  if (filters.task) parts.push(`task ${filters.task}`);
  if (filters.routing_key) parts.push(`routing key ${filters.routing_key}`);
  if (filters.q) parts.push(`detail holding “${filters.q}”`);
  if (filters.since) parts.push(`failed from ${formatTime(filters.since)}`);
  if (filters.until) parts.push(`failed before ${formatTime(filters.until)}`);
  return parts.join(", ") || "every dead letter";
}

// --- What the view says -------------------------------------------------------------------

function say(element, text, tone) {
  element.textContent = text;
  element.dataset.tone = tone || "info";
  element.hidden = !text;
}

function explain(error, element = els.state) {
  if (error.name === "AbortError") return;
  switch (error.kind) {
    case "unauthorized":
      els.tokenBox.open = true;
      say(element, "This server needs an access token: enter it under Access token.", "error");
      break;
    case "forbidden":
      els.tokenBox.open = true;
      say(element, `This token may read the dead letters, not replay or purge them: enter the operator token under Access token.${error.detail ? ` (${error.detail})` : ""}`, "error");
      break;
    case "not-found":
      say(element, "There is no such dead letter (replayed or purged since?).", "error");
      break;
    case "bad-request":
      say(element, `The server did not accept the request${error.detail ? `: ${error.detail}` : "."}`, "error");
      break;
    case "conflict":
      say(element, `This was done already${error.detail ? `: ${error.detail}` : "."}`, "error");
      break;
    case "unreachable":
      say(element, "The server does not answer. Check that it is running.", "error");
      break;
    default:
      say(element, `The server failed to answer (HTTP ${error.status})${error.detail ? `: ${error.detail}` : "."}`, "error");
  }
}

// --- Loading ------------------------------------------------------------------------------

export async function show() {
  const search = new URLSearchParams(window.location.search);
  if (state) state.abort.abort();
  state = {
    filters: filtersFromAddress(search),
    by: search.get("by") === "task" ? "task" : "error",
    letter: search.get("letter") || "",
    abort: new AbortController(),
    selected: new Set(),
    next: null,
    actionsNext: null,
    operator: false,
  };
  fillForm(state.filters);
  for (const radio of document.querySelectorAll('input[name="by"]')) radio.checked = radio.value === state.by;
  say(els.result, "");
  await refresh();
}

async function refresh() {
  const current = state;
  rememberToken();
  writeAddress();
  say(els.state, "Loading…", "busy");
  try {
    await Promise.all([loadCodes(current), loadChart(current), loadList(current, true), loadActions(current, true)]);
  } catch (error) {
    if (state === current) explain(error);
    return;
  }
  if (state !== current) return;
  say(els.state, "");
  current.operator = await hasOperatorRoutes();
  els.operate.hidden = !current.operator;
  els.letterOperate.hidden = !current.operator;
  if (current.letter) await showLetter(current, current.letter);
  else els.letter.hidden = true;
}

async function loadCodes(current) {
  const census = await getJson(`/dead-letters?${query({ ...current.filters, error: [] }, { sample: 0 })}`, current.abort.signal);
  const matching = await getJson(`/dead-letters?${query(current.filters, { sample: 0 })}`, current.abort.signal);
  if (state !== current) return;
  const counts = new Map(census.by_error.map((group) => [group.error, group.count]));
  for (const code of current.filters.error) if (!counts.has(code)) counts.set(code, 0);
  els.codes.replaceChildren();
  for (const [code, count] of counts) {
    const label = document.createElement("label");
    label.className = "code";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.name = "error";
    box.value = code;
    box.checked = current.filters.error.includes(code);
    label.append(box, document.createTextNode(` ${code} `));
    const number = document.createElement("span");
    number.className = "count";
    number.textContent = `(${count.toLocaleString()})`;
    label.append(number);
    els.codes.append(label);
  }
  if (!counts.size) els.codes.textContent = "No dead letters.";
  current.total = matching.total;
  els.count.textContent = `(${matching.total.toLocaleString()} ${isFiltered(current.filters) ? "match" : "in all"})`;
}

async function loadChart(current) {
  const chart = await getJson(`/dead-letters/timeline?${query(current.filters, { by: current.by })}`, current.abort.signal);
  if (state !== current) return;
  draw(els.chart, chart, (start, end) => {
    state.filters = { ...filtersFromForm(), since: start, until: end };
    fillForm(state.filters);
    refresh();
  });
  legend(els.chartLegend, chart, (key, name) => {
    if (chart.by !== "task") return document.createTextNode(name);
    const anchor = document.createElement("a");
    anchor.href = `/?${new URLSearchParams({ task: key })}`;
    anchor.textContent = name;
    anchor.className = "mono";
    return anchor;
  });
  table(els.chartData, chart);
  els.chartCaption.textContent = caption(chart);
}

async function loadList(current, first) {
  if (first) {
    els.rows.replaceChildren();
    current.selected.clear();
    current.next = null;
    els.selectAll.checked = false;
    selectionChanged();
  }
  const page = await getJson(`/dead-letters/letters?${query(current.filters, { limit: 50, after: current.next })}`, current.abort.signal);
  if (state !== current) return;
  for (const letter of page.letters) els.rows.append(letterRow(letter));
  current.next = page.next;
  els.more.hidden = !page.next;
  if (first && !page.letters.length) say(els.state, isFiltered(current.filters) ? "No dead letter matches these filters." : "No dead letters: every message was stored.", "empty");
}

function letterRow(letter) {
  const row = document.createElement("tr");
  row.dataset.id = String(letter.id);
  const pick = document.createElement("td");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.value = String(letter.id);
  box.setAttribute("aria-label", `Select letter ${letter.id}`);
  box.addEventListener("change", () => {
    if (box.checked) state.selected.add(letter.id);
    else state.selected.delete(letter.id);
    selectionChanged();
  });
  pick.append(box);
  const id = document.createElement("td");
  const open = document.createElement("a");
  open.href = `/?${query(state.filters, { view: "dead-letters", letter: letter.id })}`;
  open.textContent = `#${letter.id}`;
  open.addEventListener("click", (event) => {
    event.preventDefault();
    state.letter = String(letter.id);
    writeAddress();
    showLetter(state, state.letter);
  });
  id.append(open);
  const failed = document.createElement("td");
  const time = document.createElement("time");
  time.dateTime = letter.failed_at || "";
  time.textContent = letter.failed_at ? formatTime(letter.failed_at) : "-";
  failed.append(time);
  const task = document.createElement("td");
  if (letter.task_id) {
    const anchor = document.createElement("a");
    anchor.href = `/?${new URLSearchParams({ task: letter.task_id })}`;
    anchor.textContent = letter.task_id;
    anchor.className = "mono";
    task.append(anchor);
  } else {
    task.textContent = "-";
  }
  row.append(pick, id, failed, text(letter.error, "code-name"), task, text(letter.routing_key || "-", "mono"), text(letter.detail, "detail"), text(String(letter.replay_count), "num"));
  return row;
}

function text(value, className) {
  const td = document.createElement("td");
  td.textContent = value;
  if (className) td.className = className;
  return td;
}

function selectionChanged() {
  const count = state ? state.selected.size : 0;
  els.replaySelected.disabled = !count;
  els.purgeSelected.disabled = !count;
  els.replaySelected.textContent = count ? `Replay ${count} selected` : "Replay selected";
  els.purgeSelected.textContent = count ? `Purge ${count} selected` : "Purge selected";
}

async function showLetter(current, id) {
  let letter;
  try {
    letter = await getJson(`/dead-letters/${encodeURIComponent(id)}`, current.abort.signal);
  } catch (error) {
    if (state === current) explain(error);
    els.letter.hidden = true;
    return;
  }
  if (state !== current) return;
  els.letter.hidden = false;
  els.letterTitle.textContent = `Letter #${letter.id}`;
  els.letterFields.replaceChildren();
  const fields = [
    ["Message id", letter.message_id || "none"],
    ["Error", letter.error],
    ["Detail", letter.detail],
    ["Task", letter.task_id || "none"],
    ["Routing key", letter.routing_key || "none"],
    ["Failed", letter.failed_at ? `${formatTime(letter.failed_at)} (${letter.failed_at})` : "unknown"],
    ["Replayed", plural(letter.replay_count, "time")],
    ["Body", plural(letter.body_bytes, "byte")],
  ];
  for (const [name, value] of fields) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    els.letterFields.append(dt, dd);
  }
  if (letter.body_text !== null && letter.body_text !== undefined) {
    els.bodyKind.textContent = "(text)";
    els.body.textContent = letter.body_text;
  } else {
    const shown = (letter.body_hex || "").length / 2;
    els.bodyKind.textContent = shown < letter.body_bytes
      ? `(not UTF-8 text: the first ${plural(shown, "byte")} of ${letter.body_bytes.toLocaleString()}, in hexadecimal)`
      : "(not UTF-8 text: in hexadecimal)";
    els.body.textContent = hexDump(letter.body_hex || "");
  }
  writeJson(els.headers, letter.headers);
  writeJson(els.properties, letter.properties);
  els.letter.dataset.id = String(letter.id);
}

async function loadActions(current, first) {
  if (first) {
    els.actionRows.replaceChildren();
    current.actionsNext = null;
  }
  const search = new URLSearchParams({ limit: "20" });
  if (current.actionsNext) search.set("after", current.actionsNext);
  const page = await getJson(`/dead-letters/actions?${search}`, current.abort.signal);
  if (state !== current) return;
  for (const action of page.actions) els.actionRows.append(actionRow(action));
  current.actionsNext = page.next;
  els.actionsMore.hidden = !page.next;
  if (first && !page.actions.length) {
    const row = document.createElement("tr");
    const td = text("No replay or purge yet.");
    td.colSpan = 7;
    row.append(td);
    els.actionRows.append(row);
  }
}

function actionRow(action) {
  const row = document.createElement("tr");
  row.dataset.id = String(action.id);
  const when = document.createElement("td");
  const time = document.createElement("time");
  time.dateTime = action.started_at;
  time.title = action.started_at;
  time.textContent = formatTime(action.started_at);
  when.append(time);
  const filter = Object.entries(action.filter).map(([name, value]) => `${name} ${Array.isArray(value) ? value.join(", ") : value}`).join("; ");
  const done = action.action === "replay" ? `${action.affected.toLocaleString()} replayed` : `${action.affected.toLocaleString()} deleted`;
  const stateText = action.state === "failed" && action.detail ? `failed: ${action.detail}` : action.state;
  row.append(
    when,
    text(`#${action.id} ${action.action}`),
    text(`${action.actor} (${action.via === "http" ? "console or HTTP" : "command"})`),
    text(filter || "every dead letter", "detail"),
    text(action.selected.toLocaleString(), "num"),
    text(action.skipped ? `${done}, ${action.skipped.toLocaleString()} left` : done, "num"),
    text(stateText),
  );
  return row;
}

// --- Replay and purge ---------------------------------------------------------------------

function newRequestId() {
  if (window.crypto.randomUUID) return window.crypto.randomUUID();
  // Pages served over plain HTTP beyond localhost lack randomUUID: version 4 by hand.
  const bytes = window.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function choiceOf(filters) {
  const choice = {};
  if (filters.error.length) choice.error = filters.error;
  for (const name of FILTERS.slice(1)) if (filters[name]) choice[name] = filters[name];
  return choice;
}

function ask(title, textContent, go) {
  els.confirmTitle.textContent = title;
  els.confirmText.textContent = textContent;
  els.confirmGo.textContent = go;
  els.confirmGo.classList.toggle("danger", title.startsWith("Purge"));
  els.confirm.returnValue = "";
  return new Promise((resolve) => {
    els.confirm.addEventListener("close", () => resolve(els.confirm.returnValue === "go"), { once: true });
    els.confirm.showModal();
    els.confirm.querySelector("#confirm-cancel").focus();
  });
}

// One replay or purge: count what the choice takes now (and the newest id, so that exactly
// those are taken), ask, then do it while following its record, then say what it did.
async function operate(kind, choice, what) {
  const current = state;
  const route = `/dead-letters/${kind}`;
  say(els.result, "");
  let preview;
  try {
    preview = await postJson(route, { ...choice, dry_run: true });
  } catch (error) {
    explain(error, els.result);
    return;
  }
  if (!preview.selected) {
    say(els.result, `No dead letter matches (${what}): nothing to ${kind}.`, "empty");
    return;
  }
  const count = preview.selected.toLocaleString();
  const letters = preview.selected === 1 ? "dead letter" : "dead letters";
  const verb = kind === "replay" ? "Replay" : "Purge";
  const consequence = kind === "replay"
    ? "Each is sent back to the exchange with its routing key; its row is deleted once the broker has it."
    : "They are deleted for good.";
  const confirmed = await ask(`${verb} ${count} ${letters}?`, `${count} ${letters} (${what}). ${consequence}`, `${verb} ${count}`);
  if (!confirmed || state !== current) return;
  const requestId = newRequestId();
  els.progress.max = preview.selected;
  els.progress.value = 0;
  els.progressLabel.textContent = `${kind === "replay" ? "Replaying" : "Purging"}: 0 of ${count}`;
  els.progressBox.hidden = false;
  setBusy(true);
  let finished = false;
  const follow = (async () => {
    while (!finished) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      if (finished) return;
      try {
        const found = await getJson(`/dead-letters/actions?${new URLSearchParams({ request_id: requestId })}`);
        const action = found.actions[0];
        if (action && !finished) {
          els.progress.value = action.affected;
          els.progressLabel.textContent = `${kind === "replay" ? "Replaying" : "Purging"}: ${action.affected.toLocaleString()} of ${count}`;
        }
      } catch (_) {
        // The progress is a help; the answer to the request says what happened.
      }
    }
  })();
  try {
    const done = await postJson(route, { ...choice, through: preview.through, request_id: requestId });
    finished = true;
    els.progress.value = done.count;
    els.progressLabel.textContent = `${kind === "replay" ? "Replayed" : "Purged"}: ${done.count.toLocaleString()} of ${count}`;
    say(els.result, resultText(kind, done), done.count === done.selected ? "done" : "info");
  } catch (error) {
    finished = true;
    explain(error, els.result);
  } finally {
    await follow;
    setBusy(false);
  }
  if (state === current) {
    state.letter = "";
    await refresh();
  }
}

function resultText(kind, done) {
  const verb = kind === "replay" ? "Replayed" : "Deleted";
  const parts = [`${verb} ${done.count.toLocaleString()} of ${plural(done.selected, "dead letter")}${done.action ? ` (recorded as #${done.action.id})` : ""}.`];
  const left = done.left_behind || {};
  const reasons = { at_max_replays: "replayed too often already", unroutable: "no queue takes their routing key", not_whole: "kept only in part" };
  for (const [reason, number] of Object.entries(left)) {
    if (number) parts.push(`${number.toLocaleString()} left: ${reasons[reason] || reason}.`);
  }
  if (typeof done.left === "number") parts.push(`${plural(done.left, "dead letter")} left in all.`);
  return parts.join(" ");
}

function setBusy(busy) {
  for (const button of [els.replaySelected, els.purgeSelected, els.replayMatching, els.purgeMatching, els.replayOne, els.purgeOne]) {
    button.disabled = busy || (button === els.replaySelected || button === els.purgeSelected ? !state.selected.size : false);
  }
  els.progressBox.setAttribute("aria-busy", busy ? "true" : "false");
}

// --- Wiring -------------------------------------------------------------------------------

export function wire() {
  els.filters.addEventListener("submit", (event) => {
    event.preventDefault();
    state.filters = filtersFromForm();
    state.letter = "";
    refresh();
  });
  els.clear.addEventListener("click", () => {
    state.filters = filtersFromAddress(new URLSearchParams());
    state.letter = "";
    fillForm(state.filters);
    refresh();
  });
  for (const radio of document.querySelectorAll('input[name="by"]')) {
    radio.addEventListener("change", () => {
      if (!radio.checked) return;
      state.by = radio.value;
      writeAddress();
      loadChart(state).catch((error) => explain(error));
    });
  }
  els.more.addEventListener("click", () => loadList(state, false).catch((error) => explain(error)));
  els.actionsMore.addEventListener("click", () => loadActions(state, false).catch((error) => explain(error)));
  els.selectAll.addEventListener("change", () => {
    for (const box of els.rows.querySelectorAll('input[type="checkbox"]')) {
      box.checked = els.selectAll.checked;
      if (box.checked) state.selected.add(Number(box.value));
      else state.selected.delete(Number(box.value));
    }
    selectionChanged();
  });
  const selected = () => Array.from(state.selected).sort((a, b) => a - b);
  const selectedWords = () => {
    const ids = selected();
    return `letter${ids.length === 1 ? "" : "s"} ${ids.slice(0, 5).map((id) => `#${id}`).join(", ")}${ids.length > 5 ? " and more" : ""}`;
  };
  els.replaySelected.addEventListener("click", () => operate("replay", { ids: selected() }, selectedWords()));
  els.purgeSelected.addEventListener("click", () => operate("purge", { ids: selected() }, selectedWords()));
  els.replayMatching.addEventListener("click", () => operate("replay", choiceOf(state.filters), describe(state.filters)));
  els.purgeMatching.addEventListener("click", () => {
    const choice = choiceOf(state.filters);
    operate("purge", isFiltered(state.filters) ? choice : { all: true }, describe(state.filters));
  });
  els.replayOne.addEventListener("click", () => operate("replay", { ids: [Number(els.letter.dataset.id)] }, `letter #${els.letter.dataset.id}`));
  els.purgeOne.addEventListener("click", () => operate("purge", { ids: [Number(els.letter.dataset.id)] }, `letter #${els.letter.dataset.id}`));
}

export function stop() {
  if (state) state.abort.abort();
  state = null;
}
