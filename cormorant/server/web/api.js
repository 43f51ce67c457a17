// The JSON API as the pages use it: the key (kept in this browser only), fetch with the
// bearer header, errors in the server's OpenAI shape, and the SSE stream of a chat request.

const KEY_NAME = "cormorant.apiKey";

export function getKey() {
  return sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME) || "";
}

export function setKey(key, remember) {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
  if (key) (remember ? localStorage : sessionStorage).setItem(KEY_NAME, key);
}

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || "";
  }
  get needsKey() { return this.status === 401; }
}

export function headers(extra = {}) {
  const out = { ...extra };
  const key = getKey();
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

async function errorOf(response) {
  let message = response.status + " " + response.statusText;
  let code = "";
  try {
    const body = await response.json();
    if (body && body.error) {
      message = String(body.error.message || message);
      code = String(body.error.code || "");
    }
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, message, code);
}

export async function request(path, options = {}) {
  const opts = { ...options, headers: headers(options.headers || {}) };
  if (opts.json !== undefined) {
    opts.body = JSON.stringify(opts.json);
    opts.headers["Content-Type"] = "application/json";
    delete opts.json;
  }
  const response = await fetch(path, opts);
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJSON(path, options = {}) {
  return (await request(path, options)).json();
}

export async function getText(path) {
  return (await request(path)).text();
}

// POST a streaming chat request; calls onChunk(parsed) for each `data:` event and resolves
// when [DONE] arrives or the stream ends. `signal` aborts it (the server sees the disconnect).
export async function streamChat(body, signal, onChunk) {
  const response = await request("/v1/chat/completions", { method: "POST", json: body, signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiError(500, String(parsed.error.message), parsed.error.code);
        onChunk(parsed);
      }
    }
  }
}

// The key dialog shared by both pages: resolves when the user saved a key.
export function askForKey(reason) {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = reason || "";
  input.value = "";
  if (!dialog.open) dialog.showModal();
  input.focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "save" && input.value.trim()) {
        setKey(input.value.trim(), document.getElementById("key-remember").checked);
        resolve(true);
      } else {
        resolve(false);
      }
    }, { once: true });
  });
}

export function bindKeyButton(onChange) {
  document.getElementById("key-button").addEventListener("click", async () => {
    if (await askForKey("")) onChange();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    setKey("", false);
    document.getElementById("key-dialog").close("forget");
    onChange();
  });
}
