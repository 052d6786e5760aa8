// The built-in chat page: streams /v1/chat/completions (SSE over fetch), renders Markdown, keeps
// the settings and the conversation in localStorage. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = { settings: "gptserve.settings", conversation: "gptserve.conversation" };
const DEFAULTS = { apiKey: "", model: "", system: "", temperature: 0.7, top_p: 1, max_tokens: 512 };

const load = (key, fallback) => {
  try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; }
};
const settings = { ...DEFAULTS, ...load(STORE.settings, {}) };
let conversation = load(STORE.conversation, []); // [{role, content, model?, state?}]
let controller = null; // the AbortController of the answer being streamed

const saveSettings = () => localStorage.setItem(STORE.settings, JSON.stringify(settings));
const saveConversation = () => localStorage.setItem(STORE.conversation, JSON.stringify(conversation));
const apiUrl = (path) => new URL(path, document.baseURI); // relative: works behind a path prefix

function headers() {
  const h = { "Content-Type": "application/json" };
  if (settings.apiKey) h.Authorization = `Bearer ${settings.apiKey}`;
  return h;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// An error response (or an in-stream error event) → one line for a person.
function describeError(status, body) {
  const message = body?.error?.message || body?.message || "";
  if (status === 401) {
    return settings.apiKey ? "API key rejected: check the key under Settings."
      : "API key needed: enter one under Settings.";
  }
  if (status === 429) return "The server is busy (429): try again in a moment.";
  return `Error${status ? " " + status : ""}: ${message || "the request failed"}`;
}

async function readError(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  return describeError(response.status, body);
}

async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch(apiUrl("v1/models"), { headers: headers() });
    if (response.status === 503) { // the weights are still loading: ask again shortly
      showError("The server is still loading the model…");
      setTimeout(loadModels, 2000);
      return;
    }
    if (!response.ok) throw new Error(await readError(response));
    // chat models only: an embedding model (task "embed") cannot answer a chat
    const ids = (await response.json()).data.filter((m) => m.task !== "embed").map((m) => m.id);
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (!ids.includes(settings.model)) settings.model = ids[0] || "";
    select.value = settings.model;
    saveSettings();
    showError("");
  } catch (err) {
    select.replaceChildren();
    showError(err.message.startsWith("API key") || err.message.startsWith("Error")
      ? err.message : `Cannot reach the server: ${err.message}`);
  }
}

function messageElement(message) {
  const el = document.createElement("div");
  el.className = `message ${message.role}`;
  const content = document.createElement("div");
  content.className = "content";
  el.append(content);
  const meta = document.createElement("div");
  meta.className = "meta";
  el.append(meta);
  fillMessage(el, message);
  return el;
}

function fillMessage(el, message) {
  const content = el.querySelector(".content");
  if (message.role === "assistant") content.innerHTML = Markdown.render(message.content);
  else content.textContent = message.content;
  el.dataset.state = message.state || "done";
  el.classList.toggle("streaming", message.state === "streaming");
  if (message.model) el.dataset.model = message.model;
  const notes = [message.model, message.state === "stopped" ? "stopped" : "",
    message.state === "error" ? "failed" : ""].filter(Boolean);
  el.querySelector(".meta").textContent = message.role === "assistant" ? notes.join(" · ") : "";
}

function renderConversation() {
  const box = $("messages");
  box.replaceChildren(...conversation.map(messageElement));
  if (!conversation.length) {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = "Ask anything. Answers stream in as the model writes them.";
    box.append(empty);
  }
  box.scrollTop = box.scrollHeight;
}

function setBusy(isBusy) {
  $("send").hidden = isBusy;
  $("stop").hidden = !isBusy;
  $("prompt").disabled = false;
}

// Yields the parsed JSON of each `data:` event of an SSE body until [DONE].
async function* sseEvents(response, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    if (signal.aborted) reader.cancel().catch(() => {});
  }
}

async function send(text) {
  showError("");
  conversation.push({ role: "user", content: text });
  const answer = { role: "assistant", content: "", model: settings.model, state: "streaming" };
  const history = conversation.filter((m) => m.state !== "error")
    .map(({ role, content }) => ({ role, content }));
  conversation.push(answer);
  renderConversation();
  const el = $("messages").lastElementChild;
  const messages = settings.system ? [{ role: "system", content: settings.system }, ...history] : history;
  const body = {
    model: settings.model || undefined, messages, stream: true, stream_options: { include_usage: true },
    temperature: Number(settings.temperature), top_p: Number(settings.top_p),
    max_tokens: Number(settings.max_tokens) || undefined,
  };
  controller = new AbortController();
  setBusy(true);
  let pending = false; // one Markdown render per animation frame, not per token
  const repaint = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fillMessage(el, answer);
      const box = $("messages");
      box.scrollTop = box.scrollHeight;
    });
  };
  const started = performance.now();
  try {
    const response = await fetch(apiUrl("v1/chat/completions"), {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await readError(response));
    for await (const chunk of sseEvents(response, controller.signal)) {
      if (chunk.error) throw new Error(describeError(chunk.error.code === "invalid_api_key" ? 401 : 0, chunk));
      if (chunk.model) answer.model = chunk.model;
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) {
        answer.content += piece;
        repaint();
      }
      if (chunk.usage) {
        const seconds = (performance.now() - started) / 1000;
        $("status").textContent = `${chunk.usage.completion_tokens} tokens in ${seconds.toFixed(1)} s`
          + ` (${(chunk.usage.completion_tokens / seconds).toFixed(1)} tokens/s)`;
      }
    }
    answer.state = "done";
  } catch (err) {
    if (err.name === "AbortError") {
      answer.state = "stopped";
      $("status").textContent = "Stopped.";
    } else {
      answer.state = "error";
      showError(err.message);
    }
  } finally {
    controller = null;
    setBusy(false);
    fillMessage(el, answer);
    saveConversation();
  }
}

function bindSetting(id, key, { number = false, onChange } = {}) {
  const input = $(id);
  const shown = $(`${id}-value`);
  input.value = settings[key];
  if (shown) shown.textContent = input.value;
  input.addEventListener("input", () => {
    settings[key] = number ? Number(input.value) : input.value;
    if (shown) shown.textContent = input.value;
    saveSettings();
  });
  if (onChange) input.addEventListener("change", onChange);
}

function init() {
  bindSetting("api-key", "apiKey", { onChange: loadModels });
  bindSetting("system-prompt", "system");
  bindSetting("temperature", "temperature", { number: true });
  bindSetting("top-p", "top_p", { number: true });
  bindSetting("max-tokens", "max_tokens", { number: true });
  $("model").addEventListener("change", () => { settings.model = $("model").value; saveSettings(); });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => controller?.abort());
  $("new-chat").addEventListener("click", () => {
    controller?.abort();
    conversation = [];
    saveConversation();
    $("status").textContent = "";
    showError("");
    renderConversation();
    $("prompt").focus();
  });
  $("toggle-settings").addEventListener("click", () => {
    const collapsed = $("settings").classList.toggle("collapsed");
    $("toggle-settings").setAttribute("aria-expanded", String(!collapsed));
  });
  // an answer cut off by a page reload is kept, marked stopped
  for (const m of conversation) if (m.state === "streaming") m.state = "stopped";
  renderConversation();
  loadModels();
}

init();
