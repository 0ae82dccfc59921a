// The chart of dead letters over time: stacked columns drawn as SVG elements (no library, no
// inline style: sizes are SVG attributes, colours are classes of style.css), a legend, and the
// same counts as a table for those who can't see it.
"use strict";

import { formatTime, plural } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 720;
const HEIGHT = 200;
const LEFT = 44;
const RIGHT = 8;
const TOP = 10;
const BOTTOM = 26;

function element(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function seriesName(series, by) {
  if (series.other) return by === "task" ? "Other tasks" : "Other codes";
  if (series.key === null) return "No task named";
  return series.key;
}

function bucketLabel(chart, index) {
  return formatTime(chart.buckets[index]);
}

// Draws `chart` (GET /dead-letters/timeline) into the SVG `svg`; `pick(start, end)` is called
// with a bucket's bounds (RFC 3339) when its column is clicked.
export function draw(svg, chart, pick) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const count = chart.buckets.length;
  const totals = Array.from({ length: count }, (_, i) => chart.series.reduce((sum, s) => sum + s.counts[i], 0));
  const highest = Math.max(1, ...totals);
  const plotWidth = WIDTH - LEFT - RIGHT;
  const plotHeight = HEIGHT - TOP - BOTTOM;
  const step = count ? plotWidth / count : plotWidth;
  const barWidth = Math.max(1, step * 0.8);
  const y = (value) => TOP + plotHeight - (value / highest) * plotHeight;

  for (const value of [0, Math.round(highest / 2), highest]) {
    svg.append(element("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: y(value), y2: y(value), class: "grid-line" }));
    svg.append(element("text", { x: LEFT - 6, y: y(value) + 4, class: "axis", "text-anchor": "end" }, String(value)));
  }
  const labelled = count <= 1 ? [0] : [0, Math.floor((count - 1) / 2), count - 1];
  for (const index of new Set(labelled)) {
    if (index >= count) continue;
    const anchor = index === 0 ? "start" : index === count - 1 ? "end" : "middle";
    const x = index === 0 ? LEFT : index === count - 1 ? WIDTH - RIGHT : LEFT + step * (index + 0.5);
    svg.append(element("text", { x, y: HEIGHT - 8, class: "axis", "text-anchor": anchor }, bucketLabel(chart, index)));
  }
  for (let index = 0; index < count; index += 1) {
    if (!totals[index]) continue;
    const x = LEFT + step * index + (step - barWidth) / 2;
    let base = 0;
    chart.series.forEach((series, order) => {
      const value = series.counts[index];
      if (!value) return;
      const top = y(base + value);
      svg.append(element("rect", {
        x, y: top, width: barWidth, height: Math.max(0.5, y(base) - top), class: `bar series-${series.other ? "other" : order}`,
      }));
      base += value;
    });
    // One target per column, over its whole height: a click filters the list to its time.
    const hit = element("rect", { x: LEFT + step * index, y: TOP, width: step, height: plotHeight, class: "hit" });
    const end = new Date(Date.parse(chart.buckets[index]) + chart.bucket_seconds * 1000).toISOString();
    hit.append(element("title", {}, `${bucketLabel(chart, index)}: ${plural(totals[index], "dead letter")}`));
    hit.addEventListener("click", () => pick(chart.buckets[index], end));
    svg.append(hit);
  }
}

export function legend(list, chart, linkTo) {
  list.replaceChildren();
  chart.series.forEach((series, order) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch series-${series.other ? "other" : order}`;
    swatch.setAttribute("aria-hidden", "true");
    const name = seriesName(series, chart.by);
    const label = linkTo && !series.other && series.key !== null ? linkTo(series.key, name) : document.createTextNode(name);
    item.append(swatch, label, document.createTextNode(` ${series.total.toLocaleString()}`));
    list.append(item);
  });
}

export function table(tableElement, chart) {
  const head = tableElement.tHead;
  const body = tableElement.tBodies[0];
  head.replaceChildren();
  body.replaceChildren();
  const row = document.createElement("tr");
  const first = document.createElement("th");
  first.scope = "col";
  first.textContent = "From";
  row.append(first);
  for (const series of chart.series) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = seriesName(series, chart.by);
    row.append(th);
  }
  head.append(row);
  chart.buckets.forEach((start, index) => {
    if (!chart.series.some((series) => series.counts[index])) return;
    const line = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = formatTime(start);
    line.append(th);
    for (const series of chart.series) {
      const td = document.createElement("td");
      td.className = "num";
      td.textContent = String(series.counts[index]);
      line.append(td);
    }
    body.append(line);
  });
}

// A sentence saying what the chart shows, for its caption (and screen readers).
export function caption(chart) {
  const total = chart.series.reduce((sum, series) => sum + series.total, 0);
  if (!total) return "No dead letters in this range.";
  const width = chart.bucket_seconds >= 86400 ? `${chart.bucket_seconds / 86400} day` : chart.bucket_seconds >= 3600 ? `${chart.bucket_seconds / 3600} hour` : `${chart.bucket_seconds / 60} minute`;
  const firstIndex = chart.buckets.findIndex((_, index) => chart.series.some((series) => series.counts[index]));
  const start = chart.buckets[firstIndex] || chart.start;
  return `${plural(total, "dead letter")} by ${chart.by === "task" ? "task" : "error code"}, in columns of ${width}${width.startsWith("1 ") ? "" : "s"}, from ${formatTime(chart.buckets[0])}; the first at ${formatTime(start)}. Click a column to list its letters.`;
}
