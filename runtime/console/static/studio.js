// Studio: pick a model, fill the form its input schema gives, submit, watch the job live.
// Jobs are followed through ONE account-wide event stream (GET /v1/events); reopening
// the page finds the account's queued and processing jobs and follows them again.
import {
  ApiError, JobStates, TERMINAL, announce, api, followEvents, fromTemplate, renderOutputs,
  setFields, setStatus, signIn,
} from "./console.js";
import { buildFields, readFields } from "./schema-form.js";

const form = document.getElementById("submit-form");
const modelSelect = document.getElementById("model");
const fields = document.getElementById("input-fields");
const submitButton = document.getElementById("submit");
const submitError = document.getElementById("submit-error");
const jobsList = document.getElementById("jobs");
const cards = new Map();
const states = new JobStates();
let key = null;
let models = new Map();
// One Idempotency-Key per submission: kept until the form changes or a job is made, so
// a double click (or a retry after a lost answer) is the same job, charged once.
let idempotencyKey = crypto.randomUUID();

async function main() {
  const [apiKey, credits] = await signIn("apiKey", (secret) => api("/v1/credits", { auth: secret }));
  key = apiKey;
  setFields(document, { account: credits.account_id });
  showCredits(credits);
  const catalogue = await api("/v1/models", { auth: key });
  models = new Map(catalogue.models.map((m) => [m.name, m]));
  for (const model of catalogue.models) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} — ${model.price} credits`;
    modelSelect.append(option);
  }
  modelSelect.addEventListener("change", pickModel);
  pickModel();
  form.addEventListener("input", () => { idempotencyKey = crypto.randomUUID(); });
  form.addEventListener("submit", submit);
  followEvents("/v1/events", key, {
    event(name, data) {
      const event = JSON.parse(data);
      if (name === "ready") resume();
      else if (name === "status") onStatus(event);
    },
    end(status) { if (status === 401) location.reload(); },
  });
}

function pickModel() {
  const model = models.get(modelSelect.value);
  buildFields(fields, model.input_schema);
  document.getElementById("model-help").textContent = `${model.price} credits per job`;
  idempotencyKey = crypto.randomUUID();
}

async function submit(event) {
  event.preventDefault();
  submitError.textContent = "";
  let input;
  try {
    input = readFields(fields);
  } catch (error) {
    submitError.textContent = error.message;
    return;
  }
  submitButton.setAttribute("aria-busy", "true");
  try {
    const job = await api("/v1/jobs", {
      method: "POST",
      auth: key,
      headers: { "Idempotency-Key": idempotencyKey },
      body: { model: modelSelect.value, input },
    });
    idempotencyKey = crypto.randomUUID();
    show(job, true);
    announce(`Job ${job.id} submitted: ${job.status}`);
    refreshCredits();
  } catch (error) {
    submitError.textContent = error instanceof ApiError ? `${error.message} (${error.status})` : error.message;
  } finally {
    submitButton.removeAttribute("aria-busy");
  }
}

/** After the stream is open: the account's open jobs, so none is missed in between. */
async function resume() {
  const pages = await Promise.all(
    ["processing", "queued"].map((status) => api(`/v1/jobs?status=${status}&limit=50`, { auth: key })),
  );
  const open = pages.flatMap((page) => page.jobs).sort((a, b) => a.created_at - b.created_at);
  for (const job of open) show(job, false);
  for (const id of cards.keys()) {
    if (!open.some((job) => job.id === id)) api(`/v1/jobs/${id}`, { auth: key }).then((job) => show(job, false));
  }
}

function onStatus(event) {
  if (!cards.has(event.job_id) || !event.job) return;
  const job = show(event.job, false);
  announce(`Job ${job.id} ${job.status}`);
  if (TERMINAL.has(job.status)) refreshCredits();
}

/** Create or update the card of `job`; returns the newest state known. */
function show(job, isNew) {
  job = states.merge(job);
  let card = cards.get(job.id);
  if (!card) {
    card = fromTemplate("job-card");
    card.dataset.jobId = job.id;
    card.querySelector("[data-action=cancel]").addEventListener("click", () => cancel(job.id));
    cards.set(job.id, card);
    jobsList.prepend(card);
    document.getElementById("jobs-empty").hidden = true;
  }
  if (card.dataset.status === job.status && card.dataset.shown === String(job.updated_at)) return job;
  card.dataset.shown = String(job.updated_at);
  const previous = card.dataset.status;
  card.dataset.status = job.status;
  setFields(card, {
    id: job.id,
    model: job.model,
    prompt: job.input.prompt ?? JSON.stringify(job.input),
    error: job.error,
    attempts: `attempt ${job.attempts}, ${job.vendor}`,
    cost: `${job.cost} credits`,
  });
  setStatus(card.querySelector("[data-field=status]"), job.status);
  card.querySelector("[data-action=cancel]").hidden = TERMINAL.has(job.status);
  if (job.status === "completed" && previous !== "completed") {
    renderOutputs(card.querySelector("[data-outputs]"), job, key);
  }
  if (isNew) card.querySelector("[data-field=id]").focus?.();
  return job;
}

async function cancel(jobId) {
  try {
    show(await api(`/v1/jobs/${jobId}/cancel`, { method: "POST", auth: key }), false);
    refreshCredits();
  } catch (error) {
    announce(`Cancel failed: ${error.message}`);
    cards.get(jobId).querySelector("[data-field=error]").textContent = error.message;
  }
}

function showCredits(credits) {
  setFields(document, {
    available: credits.available,
    held: credits.held,
    balance: credits.balance,
  });
}

async function refreshCredits() {
  showCredits(await api("/v1/credits", { auth: key }));
}

main().catch((error) => {
  submitError.textContent = error.message;
});
