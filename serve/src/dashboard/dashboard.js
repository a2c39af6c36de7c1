// Backstop's live dashboard: reads /status once a second and draws it. Every text the sidecar
// reports (model ids a caller chose among them) goes in as text, never as markup. Changes go to
// the admin API with the token typed here, kept in this tab's sessionStorage only.
"use strict";

const SERIES = [
  ["requests", "requests"],
  ["throttles", "throttles"],
  ["fallback_invocations", "fallbacks"],
  ["retries", "retries"],
];
const KEEP = 600; // points: ten minutes at one a second
const history = SERIES.map(() => []);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function number(value, digits) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" ? value.toFixed(digits || 0) : String(value);
}

function short(digest) {
  return typeof digest === "string" ? digest.slice(0, 12) : "?";
}

function sparkline(label, points, id) {
  const box = el("div", undefined, "spark");
  box.id = id;
  const last = points.length ? points[points.length - 1] : 0;
  box.append(el("div", `${label} ${last}`, "label"));
  const width = 220, height = 48;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const max = Math.max(1, ...points);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute(
    "points",
    points
      .map((v, i) => `${(i / Math.max(1, KEEP - 1)) * width},${height - (v / max) * (height - 2) - 1}`)
      .join(" "),
  );
  svg.append(line);
  box.append(svg);
  return box;
}

function drawSeries(status) {
  const totals = SERIES.map(([key]) =>
    (status.chains || []).reduce((sum, chain) => sum + ((chain.counters || {})[key] || 0), 0),
  );
  totals.forEach((total, i) => {
    history[i].push(total);
    if (history[i].length > KEEP) history[i].shift();
  });
  const series = document.getElementById("series");
  series.replaceChildren(
    ...SERIES.map(([key, label], i) => sparkline(label, history[i], `series-${key}`)),
  );
}

function drawChains(status) {
  const body = document.querySelector("#chains tbody");
  const rows = [];
  for (const chain of status.chains || []) {
    const head = el("tr", undefined, "chain");
    const title = el("td", chain.requested);
    title.colSpan = 10;
    title.append(el("span", ` · queue ${chain.queue_depth}`, "muted"));
    head.append(title);
    rows.push(head);
    for (const model of chain.models || []) {
      const health = model.health || {};
      const capacity = model.capacity || {};
      const tokens = model.tokens || {};
      const row = el("tr");
      row.dataset.model = model.id;
      const breaker = String(health.breaker || "?");
      row.append(
        el("td", model.id, "model"),
        el("td", breaker, `breaker breaker-${breaker.replace(/[^a-z-]/g, "")}`),
        el("td", number(health.requests)),
        el("td", number(health.throttles)),
        el("td", number(health.errors)),
        el("td", number(capacity.requests_per_minute)),
        el("td", number(capacity.headroom_requests, 1)),
        el("td", number(capacity.in_flight)),
        el("td", number(tokens.reserved)),
        el("td", number(tokens.settled)),
      );
      rows.push(row);
    }
  }
  body.replaceChildren(...rows);
}

function drawPolicy(status) {
  const policy = status.policy || {};
  const facts = document.getElementById("policy");
  const pairs = [
    ["live", `${policy.name} ${policy.version}`],
    ["digest", policy.digest],
    ["from", policy.origin],
    ["contract", policy.wit_version],
    ["decisions", policy.decisions],
    ["faults", policy.faults],
    ["swaps", policy.swaps],
    ["rejected", policy.rejections],
    ["rolled back", policy.rollbacks],
    ["on probation", policy.on_probation ? "yes" : "no"],
  ];
  facts.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  facts.querySelectorAll("dd")[0].id = "live-policy";

  const events = document.getElementById("events");
  events.replaceChildren(
    ...(policy.recent || [])
      .slice(-10)
      .reverse()
      .map((e) => {
        const when = new Date(e.at_ms).toLocaleTimeString();
        const reason = e.reason ? ` — ${e.reason}` : "";
        return el("li", `${when} ${e.event} ${e.version} (${short(e.digest)}) from ${e.origin}${reason}`);
      }),
  );

  const quarantine = document.getElementById("quarantine");
  quarantine.replaceChildren(
    ...(policy.quarantined || []).map((q) => {
      const item = el("li", `${short(q.digest)}: ${q.reason} `);
      const release = el("button", "release");
      release.type = "button";
      release.addEventListener("click", () =>
        change("DELETE", `/quarantine/${encodeURIComponent(q.digest)}`),
      );
      item.append(release);
      return item;
    }),
  );
  if (!quarantine.children.length) quarantine.append(el("li", "none", "muted"));

  const shadow = document.getElementById("shadow");
  if (policy.shadow) {
    const s = policy.shadow;
    const disagreements = Object.entries(s.disagreements || {})
      .map(([kind, n]) => `${kind} ${n}`)
      .join(", ");
    shadow.textContent = `${s.name} ${s.version} (${short(s.digest)}): ${s.decisions} decisions, ${s.agreed} agreed, ${s.faults} faults${disagreements ? "; would differ: " + disagreements : ""}`;
    shadow.className = "";
  } else {
    shadow.textContent = "none";
    shadow.className = "muted";
  }
}

function drawOverview(status) {
  document.getElementById("in-flight").textContent = `${status.in_flight} of ${status.max_in_flight}`;
  document.getElementById("draining").textContent = status.draining ? "draining" : "serving";
  const fleet = status.fleet;
  document.getElementById("fleet").textContent = fleet
    ? `${fleet.fleet} as ${fleet.replica}: ${fleet.mode}`
    : "alone";
}

async function refresh() {
  const connection = document.getElementById("connection");
  try {
    const answer = await fetch("/status", { cache: "no-store" });
    if (!answer.ok) throw new Error(`status ${answer.status}`);
    const status = await answer.json();
    drawOverview(status);
    drawSeries(status);
    drawChains(status);
    drawPolicy(status);
    connection.textContent = `updated ${new Date().toLocaleTimeString()}`;
    connection.className = "muted";
    document.body.dataset.ready = "true";
  } catch (error) {
    connection.textContent = `cannot read /status: ${error.message}`;
    connection.className = "breaker-open";
  }
}

async function change(method, path, body) {
  const answer = document.getElementById("answer");
  const token = document.getElementById("token").value;
  sessionStorage.setItem("backstop-admin-token", token);
  try {
    const response = await fetch(path, {
      method,
      headers: token ? { authorization: `Bearer ${token}` } : {},
      body,
    });
    const text = await response.text();
    answer.textContent = `${method} ${path}: ${response.status}\n${text}`;
  } catch (error) {
    answer.textContent = `${method} ${path}: ${error.message}`;
  }
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  const token = document.getElementById("token");
  token.value = sessionStorage.getItem("backstop-admin-token") || "";
  document.getElementById("swap").addEventListener("click", async () => {
    const file = document.getElementById("module").files[0];
    if (!file) {
      document.getElementById("answer").textContent = "choose a module file first";
      return;
    }
    change("PUT", "/policy", await file.arrayBuffer());
  });
  document.getElementById("rollback").addEventListener("click", () => change("POST", "/policy/rollback"));
  document.getElementById("promote").addEventListener("click", () => change("POST", "/policy/shadow/promote"));
  document.getElementById("end-shadow").addEventListener("click", () => change("DELETE", "/policy/shadow"));
  refresh();
  setInterval(refresh, 1000);
});
