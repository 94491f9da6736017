// The imagegate playground: plain JavaScript over the public API, no build step.
"use strict";

const ENDPOINT = "/v1/ai/gemini-2-5-flash-image-preview";
const KEY_STORAGE = "imagegate.key";
const MAX_REFERENCES = 3;
const WAIT_LIMIT_MS = 10 * 60 * 1000;

const $ = (id) => document.getElementById(id);
const references = []; // {name, dataUri}
let timer = null;

class ApiError extends Error {
  constructor(message, status, invalidParams) {
    super(message);
    this.status = status;
    this.invalidParams = invalidParams || [];
  }
}

function apiKey() {
  return $("key").value.trim();
}

async function api(path, options = {}) {
  const headers = { "x-freepik-api-key": apiKey(), ...(options.headers || {}) };
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    throw new ApiError(`Cannot reach the server (${error.message}).`, 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const message = (body && body.message) || `HTTP ${response.status}`;
    throw new ApiError(message, response.status, body && body.invalid_params);
  }
  return body;
}

// --- errors and status ------------------------------------------------------------------------
function showError(error) {
  const box = $("error");
  box.replaceChildren();
  const title = document.createElement("div");
  title.textContent = error.message;
  box.append(title);
  if (error.invalidParams && error.invalidParams.length) {
    const list = document.createElement("ul");
    for (const param of error.invalidParams) {
      const item = document.createElement("li");
      const name = document.createElement("code");
      name.textContent = param.name;
      item.append(name, `: ${param.reason}`);
      list.append(item);
    }
    box.append(list);
  }
  if (error.status === 401) {
    const hint = document.createElement("div");
    hint.textContent = "Check the API key above.";
    box.append(hint);
  }
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function badge(status) {
  const span = document.createElement("span");
  span.className = `badge ${status}`;
  span.textContent = status.replace("_", " ");
  return span;
}

function showStatus(task, started) {
  const box = $("status");
  box.hidden = false;
  box.classList.toggle("done", task.status === "COMPLETED" || task.status === "FAILED");
  box.dataset.status = task.status;
  const render = () => {
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const text = $("status-text");
    text.replaceChildren(badge(task.status), ` task ${task.task_id.slice(0, 8)} · ${seconds} s`);
  };
  render();
  clearInterval(timer);
  if (!box.classList.contains("done")) timer = setInterval(render, 100);
}

function finished(task) {
  return task.status === "COMPLETED" || task.status === "FAILED";
}

// --- following a task: the event stream, else polling ------------------------------------------
// EventSource cannot send the key header, so the stream is read with fetch.
async function streamTask(taskId, onTask) {
  const response = await fetch(`${ENDPOINT}/${taskId}/events`, {
    headers: { "x-freepik-api-key": apiKey(), accept: "text/event-stream" },
  });
  const type = response.headers.get("content-type") || "";
  if (!response.ok || !type.startsWith("text/event-stream") || !response.body) return null;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buffer += value;
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event === "status" && data.length) {
          const task = JSON.parse(data.join("\n"));
          onTask(task);
          if (finished(task)) {
            reader.cancel();
            return task;
          }
        }
        event = "";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
    }
  }
}

async function pollTask(taskId, onTask) {
  const deadline = Date.now() + WAIT_LIMIT_MS;
  let delay = 400;
  while (Date.now() < deadline) {
    const task = (await api(`${ENDPOINT}/${taskId}`)).data;
    onTask(task);
    if (finished(task)) return task;
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(3000, delay * 1.5);
  }
  throw new ApiError("The task did not finish in 10 minutes; it is still listed below.", 0);
}

async function followTask(taskId, onTask) {
  try {
    const task = await streamTask(taskId, onTask);
    if (task) return task;
  } catch (_) {
    // A proxy that buffers or drops the stream: polling still works.
  }
  return pollTask(taskId, onTask);
}

// --- results and gallery ----------------------------------------------------------------------
function showResult(task) {
  const result = $("result");
  result.replaceChildren();
  if (task.status === "FAILED") {
    showError(new ApiError(`The task failed: ${task.error || "no reason given"}`, 0));
    const note = document.createElement("p");
    note.className = "hint placeholder";
    note.textContent = "No image: see the error on the left.";
    result.append(note);
    return;
  }
  for (const url of task.generated) {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = url;
    image.alt = $("prompt").value.trim() || "generated image";
    const caption = document.createElement("figcaption");
    const link = document.createElement("a");
    link.href = url;
    link.target = "_blank";
    link.rel = "noopener";
    link.textContent = "Open full size";
    caption.append(link, ` · ${task.model || "image"} · task ${task.task_id}`);
    figure.append(image, caption);
    result.append(figure);
  }
  if (task.text) {
    const said = document.createElement("p");
    said.className = "hint";
    said.textContent = task.text;
    result.append(said);
  }
}

async function refreshGallery() {
  const gallery = $("gallery");
  const note = $("gallery-note");
  if (!apiKey()) {
    gallery.replaceChildren();
    note.textContent = "Enter your API key to see your recent tasks.";
    return;
  }
  let tasks;
  try {
    tasks = (await api(`${ENDPOINT}?page=1&per_page=12`)).data;
  } catch (error) {
    gallery.replaceChildren();
    note.textContent = `Could not list tasks: ${error.message}`;
    return;
  }
  note.textContent = tasks.length ? "" : "No tasks yet.";
  gallery.replaceChildren(
    ...tasks.map((task) => {
      const url = task.generated[0];
      const tile = document.createElement(url ? "a" : "div");
      tile.className = "tile";
      tile.title = `${task.status} · ${task.task_id}`;
      if (url) {
        tile.href = url;
        tile.target = "_blank";
        tile.rel = "noopener";
        const image = document.createElement("img");
        image.src = url;
        image.loading = "lazy";
        image.alt = `task ${task.task_id}`;
        tile.append(image);
      } else {
        const why = document.createElement("div");
        why.className = "why";
        why.textContent = task.error || `task ${task.task_id.slice(0, 8)}`;
        tile.append(why);
      }
      tile.append(badge(task.status));
      return tile;
    }),
  );
}

// --- references -------------------------------------------------------------------------------
function readAsDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function addFiles(files) {
  clearError();
  for (const file of files) {
    if (!file.type.startsWith("image/")) {
      showError(new ApiError(`${file.name} is not an image.`, 0));
      continue;
    }
    if (references.length >= MAX_REFERENCES) {
      showError(new ApiError(`At most ${MAX_REFERENCES} reference images.`, 0));
      break;
    }
    references.push({ name: file.name, dataUri: await readAsDataUri(file) });
  }
  renderThumbs();
}

function renderThumbs() {
  $("ref-thumbs").replaceChildren(
    ...references.map((ref, index) => {
      const thumb = document.createElement("div");
      thumb.className = "thumb";
      const image = document.createElement("img");
      image.src = ref.dataUri;
      image.alt = ref.name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.title = `Remove ${ref.name}`;
      remove.addEventListener("click", (event) => {
        event.stopPropagation();
        references.splice(index, 1);
        renderThumbs();
      });
      thumb.append(image, remove);
      return thumb;
    }),
  );
  $("drop-hint").hidden = references.length >= MAX_REFERENCES;
}

// --- submit -----------------------------------------------------------------------------------
async function submit(event) {
  event.preventDefault();
  clearError();
  if (!apiKey()) {
    showError(new ApiError("Enter your API key first.", 0));
    $("key").focus();
    return;
  }
  const body = { prompt: $("prompt").value };
  if (references.length) body.reference_images = references.map((ref) => ref.dataUri);
  if ($("aspect").value) body.aspect_ratio = $("aspect").value;
  const button = $("generate");
  button.disabled = true;
  button.textContent = "Generating…";
  const started = Date.now();
  try {
    const created = (
      await api(ENDPOINT, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      })
    ).data;
    $("result").replaceChildren();
    showStatus(created, started);
    refreshGallery();
    const task = await followTask(created.task_id, (update) => showStatus(update, started));
    showResult(task);
  } catch (error) {
    $("status").hidden = true;
    clearInterval(timer);
    showError(error);
  } finally {
    button.disabled = false;
    button.textContent = "Generate";
    refreshGallery();
  }
}

function setup() {
  const key = $("key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, apiKey());
    $("key-note").textContent = "Key saved in this browser.";
    refreshGallery();
  });
  $("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    key.value = "";
    $("key-note").textContent = "Key forgotten.";
    refreshGallery();
  });

  const zone = $("dropzone");
  const input = $("refs-input");
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", async () => {
    await addFiles([...input.files]);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addFiles([...event.dataTransfer.files]);
  });

  $("create-form").addEventListener("submit", submit);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.metaKey || event.ctrlKey)) submit(event);
  });
  $("refresh").addEventListener("click", refreshGallery);
  refreshGallery();
}

document.addEventListener("DOMContentLoaded", setup);
