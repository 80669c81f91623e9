// The checkout return page: poll the licence until Stripe's webhook has activated it,
// then reload so the server renders the licence.
(function () {
  const root = document.getElementById("licence-return");
  if (!root || root.dataset.status !== "pending") return;
  let delay = 1000;
  async function poll() {
    try {
      const response = await fetch(root.dataset.statusUrl, { credentials: "same-origin" });
      if (response.ok) {
        const licence = await response.json();
        if (licence.status !== "pending") {
          window.location.reload();
          return;
        }
      }
    } catch (error) {
      // A dropped request: try again on the next tick.
    }
    delay = Math.min(delay * 1.5, 5000);
    window.setTimeout(poll, delay);
  }
  window.setTimeout(poll, delay);
})();
