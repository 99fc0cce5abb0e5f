// The station's HTTP API as the screen uses it: JSON requests with the operator's token, and the live stream.

const SESSION_KEY = "amflow.operator";

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

/** Log out at the station too (its token stops working), then forget the token here whatever it answers. */
export async function logOut() {
  try {
    if (currentLogin()) await api("/api/logout", { method: "POST" });
  } catch {
    // an expired token or an older station without the route: forgetting it here is what matters
  } finally {
    forgetLogin();
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

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const login = currentLogin();
  if (login) headers.Authorization = `Bearer ${login.token}`;
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
  if (!response.ok) {
    throw new ApiError(response.status, describe(data, `${response.status} ${response.statusText}`));
  }
  return data;
}

export async function logIn(operator, pin) {
  const login = await api("/api/login", { method: "POST", body: { operator, pin } });
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(login));
  return login;
}

/**
 * Follow /api/events/ (Server-Sent Events). The browser reconnects by itself after a dropped connection;
 * when it gives up (the server answered with an error, or is gone), this starts over, waiting longer each time.
 */
export function follow({ onOpen, onDown, onState, onScan }) {
  let delay = 500;
  let source = null;
  const start = () => {
    source = new EventSource("/api/events/");
    source.addEventListener("open", () => {
      delay = 500;
      onOpen();
    });
    source.addEventListener("state", (event) => onState(JSON.parse(event.data)));
    source.addEventListener("scan", (event) => onScan(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      onDown();
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(start, delay);
        delay = Math.min(delay * 2, 10000);
      }
    });
  };
  start();
}
