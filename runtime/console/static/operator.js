// Operator view (admin token): vendors now, dead letters with redrive, accounts with
// their grants, and links to the Grafana dashboards.
import { announce, api, formatTime, fromTemplate, setFields, setStatus, signIn } from "./console.js";

const VENDOR_REFRESH_MS = 5000;
let token = null;
let accountCursors = [null];
let accountNext = null;

async function main() {
  const [admin, vendors] = await signIn("admin", (secret) => api("/v1/admin/vendors", { auth: secret }));
  token = admin;
  showVendors(vendors);
  setInterval(() => { if (!document.hidden) refreshVendors(); }, VENDOR_REFRESH_MS);
  loadDeadLetters();
  loadAccounts();
  document.getElementById("accounts-older").addEventListener("click", () => { accountCursors.push(accountNext); loadAccounts(); });
  document.getElementById("accounts-newer").addEventListener("click", () => { accountCursors.pop(); loadAccounts(); });
  showDashboards();
}

async function refreshVendors() {
  try {
    showVendors(await api("/v1/admin/vendors", { auth: token }));
  } catch (error) {
    document.getElementById("vendors-updated").textContent = `not refreshed: ${error.message}`;
  }
}

function showVendors(body) {
  const rows = body.vendors.map((vendor) => {
    const tr = fromTemplate("vendor-row");
    const unknown = vendor.reachable ? "" : "unreachable";
    setFields(tr, {
      vendor: vendor.vendor,
      slots: vendor.reachable ? `${vendor.in_flight} / ${vendor.limit}` : `? / ${vendor.limit}`,
      queued: vendor.queued ?? unknown,
      rate: vendor.rate_limit ? `${vendor.rate_limit}/s` : "none",
      retries: vendor.retries ?? "",
      failovers: vendor.failovers ?? "",
      completed: vendor.completed ?? "",
      failed: vendor.failed ?? "",
      wasted: vendor.wasted == null ? "" : vendor.late_orphans
        ? `${vendor.wasted} (${vendor.late_orphans} late orphans)` : String(vendor.wasted),
    });
    const meter = tr.querySelector("[data-meter]");
    meter.max = vendor.limit;
    meter.value = vendor.in_flight ?? 0;
    meter.high = vendor.limit; // full is shown as such, not as an error
    meter.setAttribute("aria-label", `${vendor.vendor}: ${vendor.in_flight ?? "?"} of ${vendor.limit} slots in flight`);
    const circuit = tr.querySelector("[data-field=circuit]");
    setStatus(circuit, vendor.circuit ?? "unreachable");
    if (vendor.error) circuit.title = vendor.error;
    tr.dataset.vendor = vendor.vendor;
    return tr;
  });
  document.getElementById("vendors").replaceChildren(...rows);
  document.getElementById("vendors-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function loadDeadLetters() {
  const body = await api("/v1/admin/dead-letters?limit=100", { auth: token });
  const rows = body.dead_letters.map((letter) => {
    const tr = fromTemplate("dead-row");
    tr.dataset.jobId = letter.job_id;
    setFields(tr, {
      job: letter.job_id,
      account: letter.account_id,
      model: letter.model,
      vendor: letter.vendor,
      error: letter.error,
      attempts: letter.attempts,
      at: formatTime(letter.created_at),
    });
    const button = tr.querySelector("[data-action=redrive]");
    button.setAttribute("aria-label", `Redrive job ${letter.job_id}`);
    button.addEventListener("click", () => redrive(tr, letter.job_id));
    return tr;
  });
  document.getElementById("dead-letters").replaceChildren(...rows);
  document.getElementById("dead-empty").hidden = rows.length > 0;
}

async function redrive(tr, jobId) {
  const button = tr.querySelector("[data-action=redrive]");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const job = await api(`/v1/admin/dead-letters/${encodeURIComponent(jobId)}/redrive`, { method: "POST", auth: token });
    button.hidden = true;
    setFields(tr, { outcome: `redriven as ${job.id} (${job.status})` });
    tr.dataset.redrivenTo = job.id;
    announce(`Dead letter ${jobId} redriven as job ${job.id}`);
    loadAccounts();
  } catch (error) {
    button.disabled = false;
    setFields(tr, { outcome: `${error.message} (${error.status})` });
  } finally {
    button.removeAttribute("aria-busy");
  }
}

async function loadAccounts() {
  const params = new URLSearchParams({ limit: 20 });
  const cursor = accountCursors[accountCursors.length - 1];
  if (cursor) params.set("cursor", cursor);
  const page = await api(`/v1/admin/accounts?${params}`, { auth: token });
  accountNext = page.next_cursor;
  const rows = page.accounts.map((account) => {
    const tr = fromTemplate("account-row");
    setFields(tr, {
      account: account.account_id,
      name: account.name,
      balance: account.balance,
      held: account.held,
      available: account.available,
      in_flight: account.in_flight,
      grants: `${account.grants.count} (${account.grants.total} credits)`,
      last_grant: formatTime(account.grants.last_at),
    });
    return tr;
  });
  document.getElementById("accounts").replaceChildren(...rows);
  document.getElementById("accounts-older").disabled = !accountNext;
  document.getElementById("accounts-newer").disabled = accountCursors.length === 1;
}

function showDashboards() {
  const main = document.getElementById("main");
  const list = document.getElementById("dashboards");
  const dashboards = JSON.parse(main.dataset.dashboards || "[]");
  for (const dashboard of dashboards) {
    const item = document.createElement("li");
    if (dashboard.url) {
      const link = document.createElement("a");
      link.href = dashboard.url;
      link.rel = "noopener";
      link.target = "_blank";
      link.textContent = dashboard.title;
      item.append(link);
    } else {
      item.append(`${dashboard.title} `);
      const code = document.createElement("code");
      code.textContent = dashboard.file;
      item.append(code);
    }
    list.append(item);
  }
  document.getElementById("grafana-note").hidden = Boolean(main.dataset.grafanaUrl);
}

main().catch((error) => announce(error.message));
