// The station's HTTP API as the screen uses it: JSON requests with the operator's token, and the live stream.

const SESSION_KEY = "amflow.operator";
const ACTIVE_KEY = "amflow.active_at"; // when the operator last touched the screen (ms), for the idle log-out
let unauthorized = () => {};

/** `handler(method, path)` hears of every 401 but the login's own (a wrong PIN) and the logout's. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** The logged-in operator ({token, operator, expires_at}) or null; an expired login is dropped. */
export function currentLogin() {
  let login = null;
  try {
    login = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
  } catch {
    login = null;
  }
  if (login && login.expires_at && Date.parse(login.expires_at) <= Date.now()) {
    sessionStorage.removeItem(SESSION_KEY);
    return null;
  }
  return login;
}

export function forgetLogin() {
  sessionStorage.removeItem(SESSION_KEY);
}

/** The operator used the screen now. */
export function touched() {
  sessionStorage.setItem(ACTIVE_KEY, String(Date.now()));
}

/** Milliseconds since the screen was last used (Infinity when never). */
export function idleFor() {
  const at = Number(sessionStorage.getItem(ACTIVE_KEY));
  return at ? Date.now() - at : Infinity;
}

/** Forget the token here at once (so nothing after this call is sent under it), then end it at the station too. */
export async function logOut() {
  const login = currentLogin();
  forgetLogin();
  try {
    if (login) await api("/api/logout", { method: "POST", token: login.token });
  } catch {
    // an expired token or an older station without the route: forgetting it here is what matters
  }
}

/** The station's refusal in words: {"error", "problems"} (or a framework's {"detail"}). */
function describe(data, fallback) {
  if (data && typeof data === "object") {
    const text = data.error ?? data.detail;
    const problems = Array.isArray(data.problems) ? data.problems : [];
    if (typeof text === "string") return problems.length ? `${text} (${problems.join("; ")})` : text;
  }
  return typeof data === "string" && data.length < 300 ? data : fallback;
}

export async function api(path, { method = "GET", body, token = currentLogin()?.token } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (response.status === 401 && path !== "/api/login" && path !== "/api/logout") unauthorized(method, path);
  if (!response.ok) {
    throw new ApiError(response.status, describe(data, `${response.status} ${response.statusText}`));
  }
  return data;
}

export async function logIn(operator, pin) {
  const login = await api("/api/login", { method: "POST", body: { operator, pin } });
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(login));
  touched();
  return login;
}

/**
 * Follow /api/events/ (Server-Sent Events). The browser reconnects by itself after a dropped connection;
 * when it gives up (the server answered with an error, or is gone), this starts over, waiting longer each time.
 * `onDown(closed)`: closed when the browser gave up (an error answer such as 401: it does not say which).
 * Returns {restart()}: connect again now (after a login, whose cookie the stream then carries).
 */
export function follow({ onOpen, onDown, onState, onScan }) {
  let delay = 500;
  let source = null;
  let timer = null;
  const start = () => {
    timer = null;
    source = new EventSource("/api/events/");
    source.addEventListener("open", () => {
      delay = 500;
      onOpen();
    });
    source.addEventListener("state", (event) => onState(JSON.parse(event.data)));
    source.addEventListener("scan", (event) => onScan(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      const closed = source.readyState === EventSource.CLOSED;
      onDown(closed);
      if (closed && timer === null) {
        source.close();
        timer = setTimeout(start, delay);
        delay = Math.min(delay * 2, 10000);
      }
    });
  };
  start();
  return {
    restart() {
      clearTimeout(timer);
      source?.close();
      delay = 500;
      start();
    },
  };
}
