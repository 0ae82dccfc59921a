// Talking to this server's API: the token in the Authorization header (never a cookie, never
// the address), errors as ApiError with a kind the views explain, JSON both ways.
"use strict";

const TOKEN_KEY = "task-history-token";

export class ApiError extends Error {
  constructor(kind, status, detail) {
    super(detail || kind);
    // "unauthorized", "forbidden", "not-found", "bad-request", "conflict", "server",
    // "unreachable"
    this.kind = kind;
    this.status = status;
    this.detail = detail;
  }
}

const tokenInput = () => document.getElementById("token");

export function currentToken() {
  return tokenInput().value.trim();
}

export function rememberToken() {
  sessionStorage.setItem(TOKEN_KEY, currentToken());
}

export function restoreToken() {
  tokenInput().value = sessionStorage.getItem(TOKEN_KEY) || "";
}

export function authHeaders() {
  const token = currentToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export async function detailOf(response) {
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

export async function failure(response) {
  const detail = await detailOf(response);
  const kinds = { 401: "unauthorized", 403: "forbidden", 404: "not-found", 409: "conflict" };
  if (kinds[response.status]) return new ApiError(kinds[response.status], response.status, detail);
  if (response.status === 400 || response.status === 415 || response.status === 422) {
    return new ApiError("bad-request", response.status, detail);
  }
  return new ApiError("server", response.status, detail);
}

async function send(url, init) {
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("unreachable", 0, "");
  }
  if (!response.ok) throw await failure(response);
  return response.json();
}

export function getJson(url, signal) {
  return send(url, { headers: { Accept: "application/json", ...authHeaders() }, signal });
}

export function postJson(url, body, signal) {
  return send(url, {
    method: "POST",
    headers: { Accept: "application/json", "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify(body),
    signal,
  });
}

// Whether this server has the operator routes (only with an operator token set on it).
export async function hasOperatorRoutes() {
  try {
    const document_ = await getJson("/openapi.json");
    return Boolean(document_.paths && document_.paths["/dead-letters/replay"]);
  } catch (_) {
    return false;
  }
}
