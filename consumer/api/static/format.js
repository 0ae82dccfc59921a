// Showing data from the API: always as text nodes (never parsed as HTML), links only for
// http and https addresses, times in the reader's zone, bytes that are not text as hex.
"use strict";

// Entries live 20 days at most: the year would only take room.
export const timeFormat = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hourCycle: "h23",
});

export function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : timeFormat.format(date);
}

// A datetime-local value (the browser's own zone) as RFC 3339 in UTC; "" if empty or invalid.
export function localToIso(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}

// RFC 3339 as a datetime-local value in the browser's zone; "" if it is no time.
export function isoToLocal(iso) {
  const date = new Date(iso || "");
  if (!iso || Number.isNaN(date.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

// The address a string is, if it is one whole http or https URL; else null. Any other scheme
// (javascript:, data:, file:) stays text.
export function safeUrl(text) {
  if (typeof text !== "string" || !/^https?:\/\/\S+$/i.test(text)) return null;
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch (_) {
    return null;
  }
}

// A link that opens elsewhere and tells the other site nothing about this page.
export function link(href, text) {
  const anchor = document.createElement("a");
  anchor.href = href;
  anchor.textContent = text;
  anchor.rel = "noopener noreferrer nofollow";
  anchor.target = "_blank";
  return anchor;
}

// JSON as JSON.stringify(value, null, 2) writes it, into `into`, with each string that is an
// http(s) URL as a link (its quotes outside the link): the text reads, and copies, as JSON.
export function writeJson(into, value) {
  into.replaceChildren();
  let text = "";
  const flush = () => {
    if (text) into.append(document.createTextNode(text));
    text = "";
  };
  const write = (item, depth) => {
    const pad = "  ".repeat(depth);
    if (typeof item === "string") {
      const href = safeUrl(item);
      if (href) {
        text += '"';
        flush();
        into.append(link(href, JSON.stringify(item).slice(1, -1)));
        text += '"';
      } else {
        text += JSON.stringify(item);
      }
    } else if (Array.isArray(item)) {
      if (!item.length) {
        text += "[]";
        return;
      }
      text += "[\n";
      item.forEach((element, index) => {
        text += `${pad}  `;
        write(element, depth + 1);
        text += index < item.length - 1 ? ",\n" : "\n";
      });
      text += `${pad}]`;
    } else if (item && typeof item === "object") {
      const keys = Object.keys(item);
      if (!keys.length) {
        text += "{}";
        return;
      }
      text += "{\n";
      keys.forEach((key, index) => {
        text += `${pad}  ${JSON.stringify(key)}: `;
        write(item[key], depth + 1);
        text += index < keys.length - 1 ? ",\n" : "\n";
      });
      text += `${pad}}`;
    } else {
      text += JSON.stringify(item === undefined ? null : item);
    }
  };
  write(value, 0);
  flush();
}

// Hexadecimal text as a dump: offset, 16 bytes, and the printable ASCII among them.
export function hexDump(hex) {
  const lines = [];
  for (let offset = 0; offset * 2 < hex.length; offset += 16) {
    const chunk = hex.slice(offset * 2, offset * 2 + 32);
    const bytes = chunk.match(/../g) || [];
    const ascii = bytes
      .map((pair) => {
        const code = Number.parseInt(pair, 16);
        return code >= 0x20 && code < 0x7f ? String.fromCharCode(code) : ".";
      })
      .join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${bytes.join(" ").padEnd(47)}  |${ascii}|`);
  }
  return lines.join("\n");
}

export function plural(count, one, many) {
  return `${count.toLocaleString()} ${count === 1 ? one : many || `${one}s`}`;
}
