// The dashboard's only door to the server: fetch with the bearer token, and one WebSocket.
// The token comes from the page URL (`/?token=...`): a browser cannot add a header to the page it
// opens, so the page itself is public and everything it fetches afterwards carries the token.

const params = new URLSearchParams(window.location.search);
export const token = params.get("token");

function headers(extra = {}) {
  const h = { ...extra };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

/** An error from the API: its `{"error", "message"}` body, or the HTTP status when there is none. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** JSON request -> parsed JSON; rejects with ApiError carrying the server's one-line message. */
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.message ? data.message : `HTTP ${response.status}`;
    throw new ApiError(response.status, data && data.error ? data.error : "http_error", message);
  }
  return data;
}

/** A run file as an object URL (an <img src> cannot send the Authorization header). */
export async function fileUrl(path) {
  if (!token) return path;
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw new ApiError(response.status, "http_error", `HTTP ${response.status} for ${path}`);
  return URL.createObjectURL(await response.blob());
}

let counter = 0;
export function nextId(prefix = "m") {
  counter += 1;
  return `${prefix}${counter}`;
}

/**
 * The WebSocket `/ws`: request/answer by message id, plus listeners for pushed messages (a patch
 * change elsewhere pushes `{"type": "logits", "id": null}`). Connects lazily and reconnects once
 * per request after a drop.
 */
class Socket {
  constructor() {
    this.ws = null;
    this.opening = null;
    this.pending = new Map(); // id -> {resolve, reject, onEvent, done: Set of types}
    this.listeners = new Map(); // type -> Set of fn
  }

  url() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const query = token ? `?token=${encodeURIComponent(token)}` : "";
    return `${scheme}//${window.location.host}/ws${query}`;
  }

  connect() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) return Promise.resolve(this.ws);
    if (this.opening) return this.opening;
    this.opening = new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url());
      ws.onopen = () => {
        this.ws = ws;
        this.opening = null;
        this.emit("open", {});
        resolve(ws);
      };
      ws.onerror = () => {
        this.opening = null;
        reject(new ApiError(0, "websocket", "the WebSocket /ws could not connect"));
      };
      ws.onclose = () => {
        if (this.ws === ws) this.ws = null;
        for (const [, entry] of this.pending) entry.reject(new ApiError(0, "websocket", "the WebSocket closed"));
        this.pending.clear();
        this.emit("close", {});
      };
      ws.onmessage = (event) => this.receive(event.data);
    });
    return this.opening;
  }

  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type).delete(fn);
  }

  emit(type, message) {
    for (const fn of this.listeners.get(type) || []) fn(message);
  }

  receive(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    const entry = message.id === null || message.id === undefined ? undefined : this.pending.get(message.id);
    if (entry) {
      if (message.type === "error") {
        this.pending.delete(message.id);
        entry.reject(new ApiError(0, message.error, message.message));
      } else if (entry.done.has(message.type)) {
        this.pending.delete(message.id);
        entry.resolve(message);
      } else if (entry.onEvent) {
        entry.onEvent(message);
      }
    }
    this.emit(message.type, message);
  }

  /** Send `message` (an id is added) and resolve with the first answer whose type is in `done`. */
  async request(message, done, onEvent) {
    const ws = await this.connect();
    const id = message.id || nextId("ws");
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onEvent, done: new Set(done) });
      ws.send(JSON.stringify({ ...message, id }));
    });
  }
}

export const socket = new Socket();

/**
 * Run analyzers through the WebSocket with progress events (`onProgress(event)`), falling back to
 * POST /analyze when the socket cannot connect. Resolves with the outcome (the /analyze body).
 */
export async function analyze(texts, analyzers, onProgress) {
  const body = texts.length === 1 ? { text: texts[0] } : { texts };
  try {
    await socket.connect();
  } catch {
    return api("/analyze", { method: "POST", body: { ...body, analyzers } });
  }
  const result = await socket.request({ type: "analyze", ...body, analyzers }, ["result"], (message) => {
    if (message.type === "progress" && onProgress) onProgress(message);
  });
  return result;
}
