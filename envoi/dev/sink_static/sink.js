// The dev sink's pages (envoi/dev/sink_pages.py): a small "new mail" notice on the list and
// confirmation before deleting. Served from the sink itself (its CSP allows only same-origin scripts).
"use strict";

document.querySelectorAll("form[data-confirm]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
});

// The list page names its newest message id; ask the JSON API for anything newer every few seconds and
// offer a reload instead of reloading by itself (which would break reading).
const notice = document.getElementById("new-mail");
if (notice) {
  const latest = notice.dataset.latestId;
  const timer = window.setInterval(async () => {
    try {
      const reply = await fetch(`/messages?since_id=${encodeURIComponent(latest)}`);
      const body = await reply.json();
      if (body.total > 0) {
        window.clearInterval(timer);
        const link = document.createElement("a");
        link.href = window.location.pathname + window.location.search;
        link.textContent = `${body.total} new message${body.total > 1 ? "s" : ""}: reload`;
        notice.append(link);
      }
    } catch (error) {
      // The sink stopped or restarted: keep the page as it is.
    }
  }, 3000);
}
