// The fine-tune form offers only the base models that support the chosen dataset's task.
(function () {
  const dataset = document.getElementById("id_dataset");
  const base = document.getElementById("id_base_model");
  const none = document.getElementById("no-fitting-base");
  if (!dataset || !base) return;

  function offerFittingBases() {
    const chosen = dataset.selectedOptions[0];
    const task = chosen ? chosen.dataset.task : "";
    let selectedFits = false;
    let firstFitting = null;
    for (const option of base.options) {
      const fits = option.dataset.tasks.split(",").includes(task);
      option.hidden = option.disabled = !fits;
      if (fits && !firstFitting) firstFitting = option;
      if (fits && option.selected) selectedFits = true;
    }
    if (!selectedFits && firstFitting) firstFitting.selected = true;
    if (none) none.hidden = Boolean(firstFitting);
  }

  dataset.addEventListener("change", offerFittingBases);
  offerFittingBases();
})();
