// The listing page's try-it box: send the form without leaving the page and show the
// answer the server rendered (the same fragment a browser without scripts gets).
(function () {
  const form = document.getElementById("try-it-form");
  if (!form) return;
  const result = document.getElementById("try-result");
  const button = form.querySelector("button[type=submit]");
  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    button.disabled = true;
    result.setAttribute("aria-busy", "true");
    result.innerHTML = '<p class="muted">Asking the model…</p>';
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        credentials: "same-origin",
        headers: { "X-Requested-With": "fetch" },
      });
      result.innerHTML = await response.text();
    } catch (error) {
      result.innerHTML = '<p class="flash flash-error" id="try-error">The portal did not answer: try again.</p>';
    } finally {
      button.disabled = false;
      result.removeAttribute("aria-busy");
    }
  });
})();
