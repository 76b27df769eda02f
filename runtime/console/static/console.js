// The console's shared parts: the API client, sign-in, the event-stream reader, rendering.
// Every page is a client of the public HTTP API (/v1/...), with the API key or the admin
// token the user typed, kept in this tab's sessionStorage only.

const STORAGE = { apiKey: "jobline.apiKey", admin: "jobline.adminToken" };

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token(kind) {
  return sessionStorage.getItem(STORAGE[kind]);
}

/** Call the API; resolves to the JSON body, or throws an ApiError with the API's message. */
export async function api(path, { method = "GET", body, auth, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, cache: "no-store" };
  if (auth) init.headers.Authorization = `Bearer ${auth}`;
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "network", `jobline did not answer (${error.message})`);
  }
  const isJson = (response.headers.get("Content-Type") || "").includes("application/json");
  const data = isJson ? await response.json() : null;
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "http_error", error.message || response.statusText);
  }
  return data;
}

/**
 * The sign-in form of the page (#signin) and the signed-in part (#app).
 * `check(secret)` must resolve when the secret works (it may return what the page needs).
 * Resolves with [secret, checked] once signed in.
 */
export function signIn(kind, check) {
  const form = document.getElementById("signin");
  const app = document.getElementById("app");
  const error = document.getElementById("signin-error");
  const signOut = document.getElementById("signout");
  signOut.addEventListener("click", () => {
    sessionStorage.removeItem(STORAGE[kind]);
    location.reload();
  });
  return new Promise((resolve) => {
    const enter = async (secret, fromForm) => {
      try {
        const checked = await check(secret);
        sessionStorage.setItem(STORAGE[kind], secret);
        form.hidden = true;
        app.hidden = false;
        signOut.hidden = false;
        resolve([secret, checked]);
      } catch (e) {
        sessionStorage.removeItem(STORAGE[kind]);
        form.hidden = false;
        app.hidden = true;
        if (fromForm) {
          error.textContent = e.message;
          form.querySelector("input").focus();
        }
      }
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      error.textContent = "";
      enter(new FormData(form).get("secret").trim(), true);
    });
    const saved = token(kind);
    if (saved) enter(saved, false);
    else form.hidden = false;
  });
}

/** Say `text` to screen readers (the page's aria-live region). */
export function announce(text) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 50);
}

// --- server-sent events ---------------------------------------------------------------

/**
 * Follow an event stream with the Authorization header (EventSource cannot send one):
 * reconnects with Last-Event-ID after a drop, stops on 204 (ended) or 401, or close().
 * handlers: {event(name, data, id), end(), error(err)}.
 */
export function followEvents(path, auth, handlers) {
  const controller = new AbortController();
  let lastId = null;
  let stopped = false;
  let delay = 500;
  const run = async () => {
    while (!stopped) {
      try {
        const headers = { Authorization: `Bearer ${auth}`, Accept: "text/event-stream" };
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
        if (response.status === 204 || response.status === 401 || response.status === 404) {
          stopped = true;
          handlers.end?.(response.status);
          return;
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        delay = 500;
        await readEvents(response.body, (name, data, id) => {
          if (id !== null) lastId = id;
          handlers.event(name, data, id);
        });
      } catch (error) {
        if (stopped || error.name === "AbortError") return;
        handlers.error?.(error);
      }
      if (stopped) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  };
  run();
  return { close() { stopped = true; controller.abort(); } };
}

/** Parse text/event-stream (the WHATWG format) from a response body. */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let name = "message";
  let data = [];
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (let line of lines) {
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (data.length) onEvent(name, data.join("\n"), id);
        name = "message";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue; // a heartbeat
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "event") name = text;
      else if (field === "data") data.push(text);
      else if (field === "id") id = text;
    }
  }
}

// --- rendering --------------------------------------------------------------------------

/** A copy of the first element of <template id=...>. */
export function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

/** Set the text of every [data-field=name] under root (text only: never HTML). */
export function setFields(root, values) {
  for (const [name, value] of Object.entries(values)) {
    for (const element of root.querySelectorAll(`[data-field="${name}"]`)) {
      element.textContent = value ?? "";
    }
  }
}

export function formatTime(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return new Date(seconds * 1000).toLocaleString();
}

export const TERMINAL = new Set(["completed", "failed", "canceled"]);

/** The status badge: text plus a data-status the stylesheet colours. */
export function setStatus(element, status) {
  element.textContent = status;
  element.dataset.status = status;
}

/**
 * The outputs of a job as [{url, content_type?}]: every one it lists in `outputs` (images
 * of a list, a video, audio, JSON and text results), one figure each; a job from before
 * `outputs` existed has its one result at result_url.
 */
export function outputsOf(job) {
  if (Array.isArray(job.outputs)) return job.outputs;
  return job.result_url ? [{ url: job.result_url }] : [];
}

const EXTENSIONS = {
  "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif",
  "video/mp4": "mp4", "video/webm": "webm", "audio/mpeg": "mp3", "audio/wav": "wav",
  "application/json": "json", "text/plain": "txt",
};

/** Fetch each output with the key and show it (image, video, audio, JSON) with a download link. */
export async function renderOutputs(container, job, auth, { compact = false } = {}) {
  for (const old of container.querySelectorAll("[data-blob]")) URL.revokeObjectURL(old.dataset.blob);
  container.replaceChildren();
  for (const [index, output] of outputsOf(job).entries()) {
    const label = `Output ${index + 1} of job ${job.id}`;
    let response;
    try {
      response = await fetch(output.url, { headers: { Authorization: `Bearer ${auth}` } });
    } catch (error) {
      container.append(`${label}: ${error.message}`);
      continue;
    }
    if (!response.ok) {
      container.append(`${label}: HTTP ${response.status}`);
      continue;
    }
    const type = (output.content_type || response.headers.get("Content-Type") || "application/octet-stream").split(";")[0];
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const figure = document.createElement("figure");
    figure.dataset.blob = url;
    if (!compact) {
      let media = null;
      if (type.startsWith("image/")) {
        media = document.createElement("img");
        media.alt = label;
      } else if (type.startsWith("video/") || type.startsWith("audio/")) {
        media = document.createElement(type.startsWith("video/") ? "video" : "audio");
        media.controls = true;
        media.setAttribute("aria-label", label);
      } else if (type.includes("json") || type.startsWith("text/")) {
        media = document.createElement("pre");
        media.textContent = await blob.text();
      }
      if (media) {
        if (media.tagName !== "PRE") media.src = url;
        figure.append(media);
      }
    }
    const caption = document.createElement("figcaption");
    const link = document.createElement("a");
    link.href = url;
    link.download = `${job.id}-${index + 1}.${EXTENSIONS[type] || "bin"}`;
    link.textContent = compact ? "Download" : `Download ${type} (${formatBytes(blob.size)})`;
    link.setAttribute("aria-label", `Download ${label.toLowerCase()}`);
    caption.append(link);
    figure.append(caption);
    container.append(figure);
  }
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * The newest state of each job from two sources that may arrive in any order (a list
 * read and the event stream): the one with the later updated_at wins.
 */
export class JobStates {
  constructor() { this.jobs = new Map(); }
  /** Remember `job` unless a newer state is known; returns the newest. */
  merge(job) {
    const known = this.jobs.get(job.id);
    if (known && known.updated_at > job.updated_at) return known;
    this.jobs.set(job.id, job);
    return job;
  }
}
