// The playground page: model picker, settings, the streamed conversation, stop, key prompt.
import { askForKey, bindKeyButton, getJSON, streamChat } from "/web/api.js";
import { asCurl, asPython, buildRequest, loadConversation, loadSettings, saveConversation,
         saveSettings } from "/web/chat.js";
import { renderMarkdown } from "/web/markdown.js";

const $ = (id) => document.getElementById(id);
const form = $("settings");
let messages = loadConversation();
let controller = null;
let wantedModel = loadSettings(form);

function setStatus(text) { $("status").textContent = text; }

function setBusy(busy) {
  document.body.dataset.state = busy ? "streaming" : "idle";
  $("send").disabled = busy;
  $("stop-button").disabled = !busy;
}

function bubble(role) {
  const item = document.createElement("article");
  item.className = "msg " + role;
  const who = document.createElement("h3");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Model";
  const body = document.createElement("div");
  body.className = "body";
  const meta = document.createElement("p");
  meta.className = "meta";
  item.append(who, body, meta);
  $("messages").append(item);
  return item;
}

function show(item, text, role) {
  const body = item.querySelector(".body");
  if (role === "user") body.textContent = text;  // the user's own text, verbatim
  else body.replaceChildren(renderMarkdown(text));
  item.scrollIntoView({ block: "end" });
}

function renderAll() {
  $("messages").replaceChildren();
  for (const m of messages) {
    const item = bubble(m.role);
    show(item, m.content, m.role);
    if (m.meta) item.querySelector(".meta").textContent = m.meta;
  }
}

function modelLabel(card) {
  if (card.alias_of) {
    const targets = Object.entries(card.alias_of)
      .map(([t, w]) => (w < 1 ? `${t} ${Math.round(w * 100)}%` : t)).join(", ");
    return `${card.id} → ${targets}`;
  }
  return card.loaded === false ? `${card.id} (loads on demand)` : card.id;
}

async function loadModels() {
  let list;
  try {
    list = await getJSON("/v1/models");
  } catch (err) {
    if (err.needsKey && await askForKey("This server needs an API key.")) return loadModels();
    setStatus("Could not list the models: " + err.message);
    return;
  }
  const select = $("model");
  const current = select.value || wantedModel;
  select.replaceChildren();
  for (const card of list.data.filter((c) => c.alias_of || !c.kind || c.kind === "generate")) {
    const option = document.createElement("option");
    option.value = card.id;
    option.textContent = modelLabel(card);
    select.append(option);
  }
  if ([...select.options].some((o) => o.value === current)) select.value = current;
  setStatus("");
  updateSnippet();
}

function currentRequest() {
  try {
    return buildRequest(form, messages);
  } catch (err) {
    setStatus("Settings: " + err.message);
    return null;
  }
}

function updateSnippet(kind) {
  const body = currentRequest();
  if (!body) return;
  const text = (kind === "python" ? asPython : asCurl)(body, location.origin);
  $("snippet").value = text;
  return text;
}

async function copy(kind) {
  const text = updateSnippet(kind);
  try {
    await navigator.clipboard.writeText(text);
    setStatus("Copied to the clipboard.");
  } catch (_) {
    $("snippet").select();
    setStatus("Select the text below and copy it.");
  }
}

function stats(started, first, usage, chunks) {
  const end = performance.now();
  const tokens = usage ? usage.completion_tokens : chunks;
  const ttft = first ? first - started : end - started;
  const decode = first ? (end - first) / 1000 : 0;
  const rate = decode > 0 && tokens > 1 ? (tokens - 1) / decode : 0;
  return `${tokens} tokens · TTFT ${Math.round(ttft)} ms · ${rate.toFixed(1)} tokens/s`;
}

async function send(text) {
  messages.push({ role: "user", content: text });
  saveConversation(messages);
  show(bubble("user"), text, "user");
  const body = currentRequest();
  if (!body) return;
  const item = bubble("assistant");
  const answer = { role: "assistant", content: "" };
  controller = new AbortController();
  setBusy(true);
  setStatus("Generating…");
  const started = performance.now();
  let first = 0, usage = null, chunks = 0, note = "", drawing = false;
  const draw = () => {  // at most once a frame, however fast the tokens come
    if (drawing) return;
    drawing = true;
    requestAnimationFrame(() => { drawing = false; show(item, answer.content, "assistant"); });
  };
  try {
    await streamChat(body, controller.signal, (chunk) => {
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (!first) first = performance.now();
        chunks += 1;
        answer.content += delta.content;
        draw();
      }
    });
  } catch (err) {
    if (err.name === "AbortError") note = " · stopped";
    else if (err.needsKey) { note = " · needs an API key"; askForKey(err.message).then(loadModels); }
    else note = " · error: " + err.message;
  }
  show(item, answer.content, "assistant");
  answer.meta = stats(started, first, usage, chunks) + note;
  item.querySelector(".meta").textContent = answer.meta;
  messages.push(answer);
  saveConversation(messages);
  controller = null;
  setBusy(false);
  setStatus(note ? note.slice(3) : "Done.");
  updateSnippet();
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value;
  if (!text.trim() || controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop-button").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => {
  messages = [];
  saveConversation(messages);
  renderAll();
  updateSnippet();
});
form.addEventListener("input", () => { saveSettings(form); updateSnippet(); });
form.addEventListener("submit", (event) => event.preventDefault());
$("copy-curl").addEventListener("click", () => copy("curl"));
$("copy-python").addEventListener("click", () => copy("python"));
bindKeyButton(loadModels);
setBusy(false);
renderAll();
loadModels();
