// The page: which view the address asks for (a task's timeline and the recent tasks, or the
// dead letters), and the access token they share. Plain JavaScript modules from this server,
// no build step, nothing loaded from elsewhere, no inline script or style (the server's
// Content-Security-Policy refuses both).
"use strict";

import { restoreToken } from "./api.js";
import * as history from "./history.js";
import * as letters from "./letters.js";

const $ = (id) => document.getElementById(id);

function currentView() {
  return new URLSearchParams(window.location.search).get("view") === "dead-letters" ? "dead-letters" : "history";
}

function show() {
  const view = currentView();
  $("view-history").hidden = view !== "history";
  $("view-letters").hidden = view !== "dead-letters";
  for (const link of document.querySelectorAll(".views a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = view === "dead-letters" ? "Dead letters · Task build history" : "Task build history";
  if (view === "dead-letters") {
    history.stop();
    letters.show();
  } else {
    letters.stop();
    history.show();
  }
}

restoreToken();
history.wire();
letters.wire();
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  // Out of the way once given; a refusal opens it again.
  $("token-box").open = false;
  if (currentView() === "dead-letters") letters.show();
  else history.start();
});
show();
