// Live progress of a private evaluation: polls it (session auth), reloads when it ends.
(function () {
  const root = document.getElementById("evaluation-progress");
  if (!root) return;
  const bar = document.getElementById("evaluation-bar");
  const text = document.getElementById("evaluation-progress-text");
  async function poll() {
    try {
      const response = await fetch(root.dataset.url, { credentials: "same-origin" });
      if (response.ok) {
        const body = await response.json();
        const total = body.progress.total || 1;
        const percent = Math.round((100 * body.progress.done) / total);
        bar.style.width = `${percent}%`;
        root.querySelector("[role=progressbar]").setAttribute("aria-valuenow", String(percent));
        text.textContent = `${body.progress.done} of ${body.progress.total} answers`;
        if (body.status === "succeeded" || body.status === "failed") {
          window.location.reload();
          return;
        }
      }
    } catch (error) {
      // a network hiccup: try again on the next tick
    }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 500);
})();
