// The timeline page: reads one task's history from this server's read API and follows new
// entries as they are stored. Plain JavaScript, no build step, nothing loaded from elsewhere.
// Entry text is only ever set with textContent: an entry's content is never parsed as HTML.
"use strict";

(() => {
  const TYPES = {
    chat_message: "Chat message",
    execution_step: "Execution step",
    agent_turn: "Agent turn",
    setup_complete: "Setup complete",
    error: "Error",
    status_change: "Status change",
  };
  const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const TOKEN_KEY = "task-history-token";
  const RETRY_FIRST_MS = 500;
  const RETRY_MAX_MS = 10000;

  const $ = (id) => document.getElementById(id);
  const els = {
    pick: $("pick"),
    task: $("task"),
    token: $("token"),
    tokenBox: $("token-box"),
    filters: $("filters"),
    since: $("since"),
    until: $("until"),
    clearTimes: $("clear-times"),
    state: $("state"),
    history: $("history"),
    timeline: $("timeline"),
    shown: $("shown"),
    more: $("more"),
    live: $("live"),
    liveText: $("live-text"),
    template: $("entry-template"),
  };

  const params = new URLSearchParams(window.location.search);
  const pageSize = clamp(Number.parseInt(params.get("limit") || "50", 10) || 50, 1, 500);

  // Everything about the task on screen; replaced whole when the task or the filters change.
  let view = null;

  function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
  }

  // --- Talking to the API -------------------------------------------------------------------

  class ApiError extends Error {
    constructor(kind, status, detail) {
      super(detail || kind);
      this.kind = kind; // "unauthorized", "unknown-task", "bad-request", "server", "unreachable"
      this.status = status;
      this.detail = detail;
    }
  }

  function authHeaders() {
    const token = els.token.value.trim();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  async function detailOf(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail) && body.detail.length && body.detail[0].msg) {
        return String(body.detail[0].msg);
      }
    } catch (_) {
      // Not JSON: the status says enough.
    }
    return "";
  }

  async function failure(response) {
    const detail = await detailOf(response);
    if (response.status === 401 || response.status === 403) {
      return new ApiError("unauthorized", response.status, detail);
    }
    if (response.status === 404) return new ApiError("unknown-task", 404, detail);
    if (response.status === 400 || response.status === 422) {
      return new ApiError("bad-request", response.status, detail);
    }
    return new ApiError("server", response.status, detail);
  }

  async function getJson(url, signal) {
    let response;
    try {
      response = await fetch(url, { headers: { Accept: "application/json", ...authHeaders() }, signal });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError("unreachable", 0, "");
    }
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  function historyUrl(filters, extra) {
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
    return `/tasks/${encodeURIComponent(filters.task)}/history?${query}`;
  }

  // --- Reading the form ---------------------------------------------------------------------

  function localToIso(value) {
    if (!value) return "";
    const date = new Date(value); // datetime-local: the browser's own time zone
    return Number.isNaN(date.getTime()) ? "" : date.toISOString();
  }

  function currentFilters() {
    const types = Array.from(els.filters.querySelectorAll('input[name="type"]:checked'), (box) => box.value);
    return {
      task: els.task.value.trim(),
      types,
      since: localToIso(els.since.value),
      until: localToIso(els.until.value),
    };
  }

  function matches(filters, entry) {
    if (!filters.types.includes(entry.context_type)) return false;
    const at = Date.parse(entry.created_at);
    if (filters.since && at < Date.parse(filters.since)) return false;
    if (filters.until && at >= Date.parse(filters.until)) return false;
    return true;
  }

  // --- What the page says -------------------------------------------------------------------

  function say(text, tone) {
    els.state.textContent = text;
    els.state.dataset.tone = tone || "info";
    els.state.hidden = !text;
  }

  function sayLive(text, tone) {
    els.live.hidden = !text;
    els.live.dataset.tone = tone || "";
    els.liveText.textContent = text || "";
  }

  function explain(error) {
    switch (error.kind) {
      case "unauthorized":
        els.tokenBox.open = true;
        if (els.token.value.trim()) {
          say("The server refused this access token. Check it, then press Show history.", "error");
        } else {
          say("This server needs an access token: enter it under Access token, then press Show history.", "error");
        }
        break;
      case "unknown-task":
        say(`There is no task ${view ? view.filters.task : ""}: check the id.`, "error");
        break;
      case "bad-request":
        say(`The server did not accept the request${error.detail ? `: ${error.detail}` : "."}`, "error");
        break;
      case "unreachable":
        say("The server does not answer. Check that it is running, then press Show history.", "error");
        break;
      default:
        say(`The server failed to answer (HTTP ${error.status})${error.detail ? `: ${error.detail}` : "."}`, "error");
    }
  }

  // --- The timeline -------------------------------------------------------------------------

  // created_at as a number that keeps microseconds, for ordering like the server does.
  function timeKey(iso) {
    const fraction = /\.(\d+)/.exec(iso);
    const micros = fraction ? Number.parseInt(fraction[1].padEnd(6, "0").slice(3, 6), 10) : 0;
    return Date.parse(iso) * 1000 + micros;
  }

  // Entries live 20 days at most: the year would only take room.
  const timeFormat = new Intl.DateTimeFormat(undefined, {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hourCycle: "h23",
  });

  function render(entry) {
    const item = els.template.content.firstElementChild.cloneNode(true);
    item.classList.add(`type-${entry.context_type}`);
    item.dataset.id = entry.id;
    item.dataset.type = entry.context_type;
    item.querySelector(".badge").textContent = TYPES[entry.context_type] || entry.context_type;
    const when = item.querySelector(".when");
    when.dateTime = entry.created_at;
    when.title = entry.created_at;
    when.textContent = timeFormat.format(new Date(entry.created_at));
    item.querySelector(".content").textContent = entry.content;
    item.querySelector(".id-entry").textContent = entry.id;
    item.querySelector(".id-workspace").textContent = entry.workspace_id || "none";
    item.querySelector(".id-session").textContent = entry.session_id || "none";
    item.querySelector(".id-expires").textContent = timeFormat.format(new Date(entry.expires_at));
    const metadata = entry.metadata && Object.keys(entry.metadata).length ? entry.metadata : null;
    const pre = item.querySelector(".metadata");
    const summary = item.querySelector("summary");
    if (metadata) {
      const fields = Object.keys(metadata).length;
      summary.textContent = `Metadata (${fields} field${fields === 1 ? "" : "s"})`;
      pre.textContent = JSON.stringify(metadata, null, 2);
    } else {
      summary.textContent = "Details";
      pre.remove();
    }
    return item;
  }

  // Adds entries not on screen yet, each in its place by created_at (ties: the order they came).
  function merge(entries, { live = false } = {}) {
    let added = 0;
    for (const entry of entries) {
      if (view.byId.has(entry.id) || !matches(view.filters, entry)) continue;
      const key = timeKey(entry.created_at);
      const item = render(entry);
      if (live) item.classList.add("arrived");
      let index = view.keys.length;
      while (index > 0 && view.keys[index - 1] > key) index -= 1;
      els.timeline.insertBefore(item, els.timeline.children[index] || null);
      view.keys.splice(index, 0, key);
      view.byId.set(entry.id, entry);
      view.counts[entry.context_type] = (view.counts[entry.context_type] || 0) + 1;
      added += 1;
    }
    if (added) showCounts();
    return added;
  }

  function showCounts() {
    const total = view.byId.size;
    els.shown.textContent = `(${total} shown)`;
    for (const slot of document.querySelectorAll("[data-count]")) {
      const count = view.counts[slot.dataset.count] || 0;
      slot.textContent = count ? `${count}` : "";
    }
    if (total) {
      say("");
    } else {
      const filtered = view.filters.since || view.filters.until || view.filters.types.length < 6;
      say(
        filtered
          ? "No entries match these filters. New ones that match will appear here."
          : "No entries for this task yet. If the id is right, new ones will appear here as they are stored.",
        "empty",
      );
    }
  }

  // --- Loading pages ------------------------------------------------------------------------

  // Pages are read newest first, so the first one ends where live entries join it; each
  // "Load older" reads the page before, and merge() puts every entry in its place.
  async function loadPage(current, after) {
    const url = historyUrl(current.filters, { after, newestFirst: true });
    const page = await getJson(url, current.abort.signal);
    if (view !== current) return;
    merge(page.entries);
    current.next = page.next;
    els.more.hidden = !page.next;
  }

  async function start() {
    stop();
    const filters = currentFilters();
    const url = new URL(window.location.href);
    if (filters.task) url.searchParams.set("task", filters.task);
    else url.searchParams.delete("task");
    window.history.replaceState(null, "", url);
    sessionStorage.setItem(TOKEN_KEY, els.token.value.trim());

    if (!filters.task) {
      say("Enter a task id to see its history.");
      return;
    }
    if (!UUID_PATTERN.test(filters.task)) {
      say(`“${filters.task}” is not a task id: a task id is a UUID such as 3f0c9a2e-5b1d-4c8e-9a6f-2d7b1e4c0a11.`, "error");
      return;
    }
    if (!filters.types.length) {
      say("Tick at least one kind of entry to see any.", "empty");
      return;
    }
    const current = {
      filters,
      abort: new AbortController(),
      byId: new Map(),
      keys: [],
      counts: {},
      next: null,
      lastEventId: "",
    };
    view = current;
    els.timeline.replaceChildren();
    els.timeline.setAttribute("aria-busy", "true");
    els.more.hidden = true;
    els.shown.textContent = "";
    say("Loading…", "busy");
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
    follow(current);
  }

  function stop() {
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

  // After the stream (re)connects without a cursor to resume from, read what was stored in
  // between: entries from the newest one on screen on, so nothing committed meanwhile is missed.
  async function catchUp(current) {
    let since = current.filters.since;
    const newest = newestEntry(current);
    if (newest && (!since || Date.parse(newest.created_at) > Date.parse(since))) {
      since = newest.created_at;
    }
    let after = null;
    do {
      const page = await getJson(
        historyUrl(current.filters, { since, after, limit: 500 }),
        current.abort.signal,
      );
      if (view !== current) return;
      merge(page.entries, { live: true });
      after = page.next;
    } while (after);
  }

  function newestEntry(current) {
    const id = els.timeline.lastElementChild && els.timeline.lastElementChild.dataset.id;
    return id ? current.byId.get(id) : null;
  }

  // --- Following new entries (Server-Sent Events read with fetch, so the token goes in a header)

  async function follow(current) {
    let delay = RETRY_FIRST_MS;
    const signal = current.abort.signal;
    while (view === current && !signal.aborted) {
      let response = null;
      try {
        const headers = { Accept: "text/event-stream", ...authHeaders() };
        if (current.lastEventId) headers["Last-Event-ID"] = current.lastEventId;
        response = await fetch(`/tasks/${encodeURIComponent(current.filters.task)}/history/stream`, {
          headers,
          signal,
          cache: "no-store",
        });
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

  els.pick.addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  els.filters.addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  els.filters.addEventListener("change", () => {
    if (els.task.value.trim()) start();
  });
  els.clearTimes.addEventListener("click", () => {
    els.since.value = "";
    els.until.value = "";
    if (els.task.value.trim()) start();
  });
  els.more.addEventListener("click", loadOlder);

  els.token.value = sessionStorage.getItem(TOKEN_KEY) || "";
  els.task.value = params.get("task") || "";
  if (els.task.value) start();
  else els.task.focus();
})();
