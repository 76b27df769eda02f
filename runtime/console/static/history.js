// History: the account's jobs newest first, by status, a page at a time; credits and the
// statement. Rows change live through ONE account-wide event stream for the whole page.
import {
  JobStates, TERMINAL, announce, api, followEvents, formatTime, fromTemplate, outputsOf,
  setFields, setStatus, signIn,
} from "./console.js";

const PAGE = 20;
const STATEMENT_STEP = 50;
const rows = document.getElementById("jobs");
const filter = document.getElementById("status");
const states = new JobStates();
let key = null;
let cursors = [null]; // cursors[i]: the cursor of page i (null: the newest page)
let nextCursor = null;
let statementCursor = null; // next_cursor of the statement's last page shown
let creditsTimer = null;

async function main() {
  const [apiKey, credits] = await signIn("apiKey", (secret) => api("/v1/credits", { auth: secret }));
  key = apiKey;
  setFields(document, { account: credits.account_id });
  showCredits(credits);
  filter.addEventListener("change", () => { cursors = [null]; loadPage(); });
  document.getElementById("older").addEventListener("click", () => { cursors.push(nextCursor); loadPage(); });
  document.getElementById("newer").addEventListener("click", () => { cursors.pop(); loadPage(); });
  document.getElementById("entries-more").addEventListener("click", () => moreEntries());
  loadStatement();
  const live = document.getElementById("live");
  let loaded = false;
  followEvents("/v1/events", key, {
    event(name, data) {
      if (name === "ready") {
        live.dataset.state = "live";
        live.textContent = "live";
        if (!loaded) { loaded = true; loadPage(); } // after the stream is open: no gap
      } else if (name === "status") onStatus(JSON.parse(data));
    },
    error() {
      live.dataset.state = "reconnecting";
      live.textContent = "reconnecting…";
    },
    end(status) { if (status === 401) location.reload(); },
  });
}

async function loadPage() {
  const params = new URLSearchParams({ limit: PAGE });
  if (filter.value) params.set("status", filter.value);
  const cursor = cursors[cursors.length - 1];
  if (cursor) params.set("cursor", cursor);
  rows.setAttribute("aria-busy", "true");
  const page = await api(`/v1/jobs?${params}`, { auth: key });
  rows.removeAttribute("aria-busy");
  nextCursor = page.next_cursor;
  rows.replaceChildren(...page.jobs.map((job) => row(states.merge(job))));
  document.getElementById("jobs-empty").hidden = page.jobs.length > 0;
  document.getElementById("older").disabled = !nextCursor;
  document.getElementById("newer").disabled = cursors.length === 1;
  document.getElementById("page-label").textContent = `Page ${cursors.length}`;
}

function onStatus(event) {
  if (!event.job) return;
  const job = states.merge(event.job);
  const existing = rows.querySelector(`tr[data-job-id="${CSS.escape(job.id)}"]`);
  if (existing) {
    existing.replaceWith(row(job));
    announce(`Job ${job.id} ${job.status}`);
  } else if (event.status === "queued" && cursors.length === 1 && (!filter.value || filter.value === "queued")) {
    rows.prepend(row(job)); // a job submitted elsewhere (the studio, a script)
    document.getElementById("jobs-empty").hidden = true;
  }
  if (event.status === "queued" || TERMINAL.has(event.status)) scheduleCredits();
}

function row(job) {
  const tr = fromTemplate("job-row");
  tr.dataset.jobId = job.id;
  setFields(tr, {
    id: job.id,
    model: job.model,
    cost: job.cost,
    created: formatTime(job.created_at),
  });
  setStatus(tr.querySelector("[data-field=status]"), job.status);
  if (job.error) tr.querySelector("[data-field=status]").title = job.error;
  const cell = tr.querySelector("[data-outputs]");
  for (const [index, output] of outputsOf(job).entries()) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary outline compact";
    button.textContent = "Download";
    button.setAttribute("aria-label", `Download output ${index + 1} of job ${job.id}`);
    button.addEventListener("click", () => download(job, index, output.url));
    cell.append(button);
  }
  return tr;
}

async function download(job, index, url) {
  const response = await fetch(url, { headers: { Authorization: `Bearer ${key}` } });
  if (!response.ok) {
    announce(`Download failed: HTTP ${response.status}`);
    return;
  }
  const href = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = href;
  link.download = `${job.id}-${index + 1}`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(href), 60_000);
}

function showCredits(credits) {
  setFields(document, { balance: credits.balance, held: credits.held, available: credits.available });
}

function scheduleCredits() {
  clearTimeout(creditsTimer);
  creditsTimer = setTimeout(async () => {
    showCredits(await api("/v1/credits", { auth: key }));
    loadStatement();
  }, 300);
}

// The statement newest first, a page at a time (the server's keyset pages: an account
// with a million entries costs the same as one with ten).
function statementPage(cursor) {
  const params = new URLSearchParams({ order: "desc", limit: STATEMENT_STEP });
  if (cursor) params.set("cursor", cursor);
  return api(`/v1/credits/entries?${params}`, { auth: key });
}

async function loadStatement() {
  const page = await statementPage(null);
  document.getElementById("entries").replaceChildren();
  showEntries(page);
}

async function moreEntries() {
  if (statementCursor) showEntries(await statementPage(statementCursor));
}

function showEntries(page) {
  const body = document.getElementById("entries");
  for (const entry of page.entries) {
    const tr = fromTemplate("entry-row");
    setFields(tr, { at: formatTime(entry.created_at), kind: entry.kind, amount: entry.amount, job: entry.job_id });
    tr.dataset.kind = entry.kind;
    body.append(tr);
  }
  statementCursor = page.next_cursor;
  document.getElementById("entries-more").hidden = !statementCursor;
}

main().catch((error) => announce(error.message));
