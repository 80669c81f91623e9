// Live progress of a fine-tuning job: polls the job and its events (session auth).
(function () {
  const root = document.getElementById("job");
  if (!root) return;
  const jobUrl = root.dataset.jobUrl;
  const terminal = new Set(["succeeded", "failed", "cancelled"]);
  const losses = [];
  const validation = [];  // one point per epoch: {epoch, step, loss, accuracy?, best}
  let lastEventId = null;

  function drawLoss() {
    if (losses.length < 1) return;
    const maxStep = Math.max(...losses.map((p) => p.step), 1);
    const values = losses.map((p) => p.loss);
    const hi = Math.max(...values), lo = Math.min(...values);
    const span = hi - lo || 1;
    const points = losses.map((p) => {
      const x = (p.step / maxStep) * 590 + 5;
      const y = 190 - ((p.loss - lo) / span) * 175;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    document.getElementById("loss-line").setAttribute("points", points.join(" "));
    document.getElementById("loss-max").textContent = `loss ${hi.toFixed(3)}`;
    document.getElementById("loss-min").textContent = `loss ${lo.toFixed(3)}`;
  }

  function drawValidation() {
    const note = document.getElementById("validation-note");
    if (validation.length < 1) return;
    const maxEpoch = Math.max(...validation.map((p) => p.epoch), 1);
    const x = (epoch) => (maxEpoch === 1 ? 300 : ((epoch - 1) / (maxEpoch - 1)) * 580 + 10);
    const values = validation.map((p) => p.loss);
    const hi = Math.max(...values), lo = Math.min(...values);
    const span = hi - lo || 1;
    const yLoss = (loss) => 185 - ((loss - lo) / span) * 160;
    const yAccuracy = (accuracy) => 185 - accuracy * 160;  // accuracy on a fixed 0-1 scale
    document.getElementById("validation-loss-line").setAttribute(
      "points", validation.map((p) => `${x(p.epoch).toFixed(1)},${yLoss(p.loss).toFixed(1)}`).join(" "));
    const withAccuracy = validation.filter((p) => typeof p.accuracy === "number");
    document.getElementById("validation-accuracy-line").setAttribute(
      "points", withAccuracy.map((p) => `${x(p.epoch).toFixed(1)},${yAccuracy(p.accuracy).toFixed(1)}`).join(" "));
    const dots = document.getElementById("validation-points");
    dots.replaceChildren();
    let best = null;
    for (const p of validation) {
      if (p.best) best = p;
      const dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
      dot.setAttribute("cx", x(p.epoch).toFixed(1));
      dot.setAttribute("cy", yLoss(p.loss).toFixed(1));
      dot.setAttribute("r", "3.5");
      dot.setAttribute("fill", "#3b5bdb");
      const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = `epoch ${p.epoch}: loss ${p.loss.toFixed(4)}` +
        (typeof p.accuracy === "number" ? `, accuracy ${p.accuracy.toFixed(4)}` : "");
      dot.appendChild(title);
      dots.appendChild(dot);
    }
    document.getElementById("validation-legend").textContent =
      `loss ${lo.toFixed(3)}–${hi.toFixed(3)} (solid)` + (withAccuracy.length ? " · accuracy 0–1 (dashed)" : "");
    if (best) {
      document.getElementById("validation-best").textContent =
        `best so far: epoch ${best.epoch}, loss ${best.loss.toFixed(4)}` +
        (typeof best.accuracy === "number" ? `, accuracy ${best.accuracy.toFixed(4)}` : "");
    }
    if (note) note.hidden = false;
  }

  function renderJob(job) {
    const status = document.getElementById("job-status");
    status.textContent = job.status;
    status.className = `badge badge-${job.status}`;
    const p = job.progress;
    const pct = p.total_steps ? Math.round((100 * p.step) / p.total_steps) : 0;
    document.getElementById("progress-bar").style.width = `${pct}%`;
    let text = `Step ${p.step} of ${p.total_steps || "?"} · epoch ${(p.epoch || 0).toFixed(2)}`;
    if (p.loss !== null) text += ` · loss ${p.loss.toFixed(4)}`;
    if (p.examples_per_s) text += ` · ${p.examples_per_s.toFixed(1)} examples/s`;
    if (p.eta_seconds && !terminal.has(job.status)) text += ` · about ${Math.ceil(p.eta_seconds)} s left`;
    document.getElementById("progress-text").textContent = text;
    if (job.error) {
      const error = document.getElementById("job-error");
      error.hidden = false;
      error.textContent = `${job.error.code}: ${job.error.message}`;
    }
    if (job.fine_tuned_model) {
      document.getElementById("job-result").hidden = false;
      document.getElementById("job-result-link").href = `/studio/models/${job.fine_tuned_model}/`;
    }
    const cancel = document.getElementById("cancel-form");
    if (cancel && terminal.has(job.status)) cancel.hidden = true;
  }

  function renderEvents(events) {
    const list = document.getElementById("events");
    for (const e of events) {
      if (e.type === "metrics" && e.data) {
        losses.push({ step: e.data.step, loss: e.data.loss });
        continue;
      }
      if (e.data && e.data.validation) validation.push(e.data.validation);
      if (e.data && e.data.validation_rows === 0) {
        document.getElementById("validation-note").textContent = e.message;
      }
      const item = document.createElement("li");
      item.className = `event event-${e.level}`;
      item.textContent = `${new Date(e.created_at).toLocaleTimeString()} ${e.message}`;
      list.appendChild(item);
    }
    drawLoss();
    drawValidation();
  }

  async function poll() {
    try {
      const job = await (await fetch(jobUrl, { credentials: "same-origin" })).json();
      let more = true;
      while (more) {
        const query = lastEventId ? `?after=${lastEventId}&limit=1000` : "?limit=1000";
        const page = await (await fetch(`${jobUrl}/events${query}`, { credentials: "same-origin" })).json();
        renderEvents(page.data);
        if (page.last_id) lastEventId = page.last_id;
        more = page.has_more;
      }
      renderJob(job);
      if (!terminal.has(job.status)) setTimeout(poll, 1000);
    } catch (err) {
      setTimeout(poll, 3000);
    }
  }
  poll();
})();
