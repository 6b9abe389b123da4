// Card entry with Stripe.js: mount Stripe's card element, confirm the SetupIntent the server made with
// Stripe (the card goes from this page to Stripe only), then post the SetupIntent's id to Envoi, which
// checks it at Stripe and makes the card the account's default.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("card-form");
  if (!form) return;
  const errors = document.getElementById("card-errors");
  const button = document.getElementById("save-card");
  if (typeof Stripe !== "function") {
    errors.textContent = "Stripe.js did not load, so no card can be entered: reload the page.";
    button.disabled = true;
    return;
  }
  const stripe = Stripe(form.dataset.publishableKey);
  const card = stripe.elements().create("card");
  card.mount("#card-element");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    errors.textContent = "";
    const result = await stripe.confirmCardSetup(form.dataset.clientSecret, { payment_method: { card } });
    if (result.error || !result.setupIntent) {
      errors.textContent = (result.error && result.error.message) || "Stripe did not accept the card.";
      button.disabled = false;
      return;
    }
    form.elements.setup_intent.value = result.setupIntent.id;
    form.submit();
  });
});
