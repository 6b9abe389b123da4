// Logs page: the live tail. An EventSource on the page's own origin (the CSP's connect-src 'self')
// prepends a row per event; rows are built with DOM methods and textContent only, never innerHTML,
// since every field of an event comes from a mail someone sent.
"use strict";

const MAX_ROWS = 500;

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (text !== undefined && text !== null) td.textContent = String(text);
  row.appendChild(td);
  return td;
}

function badge(parent, text, extra) {
  const span = document.createElement("span");
  span.className = ["badge", ...extra].join(" ");
  span.textContent = text;
  parent.appendChild(span);
  parent.appendChild(document.createTextNode(" "));
}

function when(epoch) {
  // As the server renders it: YYYY-MM-DD HH:MM:SS UTC
  return new Date(epoch * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function messagePath(domain, messageId) {
  const id = encodeURIComponent(messageId.replace(/^<|>$/g, "")).replace(/%40/g, "@").replace(/%2B/g, "+");
  return "/dashboard/domains/" + encodeURIComponent(domain) + "/messages/" + id;
}

function rowFor(data, pageDomain) {
  const message = data.message || {};
  const headers = message.headers || {};
  const status = data["delivery-status"] || {};
  const tr = document.createElement("tr");
  tr.dataset.eventId = data.id || "";
  tr.className = "live";
  const time = cell(tr, null, "mono");
  const domain = (data.domain && data.domain.name) || pageDomain;
  const messageId = headers["message-id"] || "";
  if (domain && messageId) {
    const a = document.createElement("a");
    a.href = messagePath(domain, messageId);
    a.textContent = when(data.timestamp || 0);
    time.appendChild(a);
  } else {
    time.textContent = when(data.timestamp || 0);
  }
  const event = String(data.event || "");
  const severity = data.severity ? String(data.severity) : "";
  badge(cell(tr), severity ? event + " (" + severity + ")" : event,
        [event, severity].filter((c) => /^[a-z-]+$/.test(c)));
  cell(tr, data.recipient || "");
  cell(tr, headers.subject || "");
  cell(tr, headers.from || "");
  const reply = cell(tr);
  if (status.code !== undefined && status.code !== null && status.code !== "") {
    const code = document.createElement("span");
    code.className = "mono";
    code.textContent = String(status.code);
    reply.appendChild(code);
    reply.appendChild(document.createTextNode(" "));
  }
  reply.appendChild(document.createTextNode(String(data.reason || status.description || status.message || "")));
  const tags = cell(tr);
  for (const tag of data.tags || []) badge(tags, String(tag), []);
  return tr;
}

document.addEventListener("DOMContentLoaded", () => {
  const toggle = document.getElementById("live-toggle");
  const body = document.querySelector("#events tbody");
  const status = document.getElementById("live-status");
  if (!toggle || !body) return;
  let source = null;
  let lastId = "";
  let retry = null;

  function say(text) { status.textContent = text; }

  function open() {
    let url = toggle.dataset.liveUrl;
    if (lastId) url += (url.includes("?") ? "&" : "?") + "last_event_id=" + encodeURIComponent(lastId);
    source = new EventSource(url);
    source.addEventListener("open", () => say("Live: new events appear at the top."));
    source.addEventListener("message", (message) => {
      lastId = message.lastEventId || lastId;
      let data;
      try { data = JSON.parse(message.data); } catch (_) { return; }
      for (const empty of body.querySelectorAll("tr.empty")) empty.remove();
      body.insertBefore(rowFor(data, toggle.dataset.domain), body.firstChild);
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    });
    source.addEventListener("gap", () => say("Live: some events were missed while away; search to see them."));
    source.addEventListener("error", () => {
      // EventSource reconnects by itself when a response ends; a refusal (too many streams, signed
      // out) closes it for good: try again a little later while the tail is on.
      if (source && source.readyState === EventSource.CLOSED) {
        say("Live tail interrupted; retrying…");
        source = null;
        retry = window.setTimeout(() => { retry = null; if (toggle.getAttribute("aria-pressed") === "true") open(); }, 5000);
      }
    });
  }

  function close() {
    if (source) source.close();
    source = null;
    if (retry) window.clearTimeout(retry);
    retry = null;
    say("");
  }

  toggle.addEventListener("click", () => {
    const on = toggle.getAttribute("aria-pressed") !== "true";
    toggle.setAttribute("aria-pressed", on ? "true" : "false");
    if (on) open(); else close();
  });
});
