// The playground's model: the conversation (kept in localStorage), the request body built
// from the settings form, and that request as a curl command or a Python snippet.

const STORE = "cormorant.conversation";
const SETTINGS = "cormorant.settings";

export function loadConversation() {
  try {
    const data = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(data) ? data.filter((m) => m && typeof m.content === "string") : [];
  } catch (_) {
    return [];
  }
}

export function saveConversation(messages) {
  localStorage.setItem(STORE, JSON.stringify(messages));
}

export function loadSettings(form) {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(SETTINGS) || "{}"); } catch (_) { /* none */ }
  for (const [name, value] of Object.entries(saved)) {
    const field = form.elements.namedItem(name);
    if (!field || typeof value !== "string" || name === "model") continue;
    if (field.type === "checkbox") field.checked = value === "true";
    else field.value = value;
  }
  return saved.model || "";
}

export function saveSettings(form) {
  const out = {};
  for (const field of form.elements) {
    if (field.name) out[field.name] = field.type === "checkbox" ? String(field.checked) : field.value;
  }
  localStorage.setItem(SETTINGS, JSON.stringify(out));
}

function number(form, name, parse) {
  const raw = form.elements.namedItem(name).value.trim();
  if (raw === "") return undefined;
  const value = parse(raw);
  return Number.isFinite(value) ? value : undefined;
}

// The body of POST /v1/chat/completions for this conversation and these settings.
export function buildRequest(form, messages) {
  const system = form.elements.namedItem("system").value;
  const body = {
    model: form.elements.namedItem("model").value || undefined,
    messages: [...(system.trim() ? [{ role: "system", content: system }] : []),
               ...messages.map((m) => ({ role: m.role, content: m.content }))],
    stream: true,
    stream_options: { include_usage: true },
    temperature: number(form, "temperature", parseFloat),
    top_p: number(form, "top_p", parseFloat),
    max_tokens: number(form, "max_tokens", (v) => parseInt(v, 10)),
    seed: number(form, "seed", (v) => parseInt(v, 10)),
  };
  const stops = form.elements.namedItem("stop").value.split(",").map((s) => s.trim())
    .filter(Boolean);
  if (stops.length) body.stop = stops;
  if (form.elements.namedItem("ignore_eos").checked) body.ignore_eos = true;
  const format = form.elements.namedItem("format").value;
  if (format === "json_object") body.response_format = { type: "json_object" };
  if (format === "json_schema") {
    body.response_format = { type: "json_schema", json_schema: {
      name: "answer", schema: JSON.parse(form.elements.namedItem("schema").value) } };
  }
  return JSON.parse(JSON.stringify(body));  // drops the undefined fields
}

function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

export function asCurl(body, origin) {
  return ["curl " + shellQuote(origin + "/v1/chat/completions") + " \\",
          '  -H "Content-Type: application/json" \\',
          '  -H "Authorization: Bearer $CORMORANT_API_KEY" \\',
          "  --no-buffer -d " + shellQuote(JSON.stringify(body))].join("\n");
}

// A JSON value as a Python literal (strings as JSON strings, which Python reads the same).
function py(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) return "[" + value.map(py).join(", ") + "]";
  if (typeof value === "object") {
    return "{" + Object.entries(value).map(([k, v]) => JSON.stringify(k) + ": " + py(v))
      .join(", ") + "}";
  }
  return JSON.stringify(value);
}

export function asPython(body, origin) {
  const { messages, stream, stream_options: _, ...params } = body;
  const args = Object.entries(params).map(([k, v]) => `    ${k}=${py(v)},`);
  return ["import os", "from openai import OpenAI", "",
          `client = OpenAI(base_url=${py(origin + "/v1")},`,
          '                api_key=os.environ.get("CORMORANT_API_KEY", "none"))',
          "stream = client.chat.completions.create(",
          `    messages=${py(messages)},`, ...args, `    stream=${py(Boolean(stream))},`, ")",
          "for chunk in stream:",
          "    if chunk.choices and chunk.choices[0].delta.content:",
          '        print(chunk.choices[0].delta.content, end="", flush=True)'].join("\n");
}
