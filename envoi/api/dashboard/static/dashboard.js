// Envoi dashboard: the little behaviour the pages need. No inline script anywhere (the CSP forbids it).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // A <form data-autosubmit> submits when one of its selects changes.
  for (const form of document.querySelectorAll("form[data-autosubmit]")) {
    for (const select of form.querySelectorAll("select")) {
      select.addEventListener("change", () => form.requestSubmit());
    }
  }
  // A form with data-confirm asks before it submits (destructive actions).
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Copy buttons: <button data-copy="#id">.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", () => {
      const target = document.querySelector(button.dataset.copy);
      if (target) navigator.clipboard.writeText(target.textContent.trim());
    });
  }
});
