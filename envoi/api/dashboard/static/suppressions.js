// Suppressions: the CSV import uploads with XMLHttpRequest so a <progress> bar can show the upload,
// then shows the server's result and refreshes the list. Without JS the form posts as usual.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("import-form");
  if (!form) return;
  const progress = document.getElementById("import-progress");
  const result = document.getElementById("import-result");
  const button = form.querySelector("button[type=submit]");

  async function refreshList() {
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("entries");
    const current = document.getElementById("entries");
    if (fresh && current) current.replaceWith(document.importNode(fresh, true));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.setRequestHeader("Accept", "application/json");
    progress.hidden = false;
    progress.value = 0;
    progress.removeAttribute("data-done");
    result.textContent = "Uploading…";
    result.classList.remove("error");
    button.disabled = true;
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) progress.value = Math.round((e.loaded / e.total) * 100);
    });
    request.addEventListener("load", async () => {
      button.disabled = false;
      progress.value = 100;
      progress.dataset.done = "true";
      let body = {};
      try { body = JSON.parse(request.responseText); } catch (_) { body = {}; }
      if (request.status === 200) {
        result.textContent = body.message || "Imported.";
        form.reset();
        await refreshList();
      } else {
        result.classList.add("error");
        result.textContent = body.error || `The import failed (HTTP ${request.status}).`;
      }
    });
    request.addEventListener("error", () => {
      button.disabled = false;
      result.classList.add("error");
      result.textContent = "The upload failed: check the connection and try again.";
    });
    request.send(new FormData(form));
  });
});
