import re

from django import forms
from django.contrib.auth import password_validation

from accounts.models import DEFAULT_API_KEY_SCOPES, ApiKeyScope, User


class SignUpForm(forms.Form):
    email = forms.EmailField()
    display_name = forms.CharField(max_length=120, required=False, label="Display name")
    password = forms.CharField(widget=forms.PasswordInput, strip=False)
    is_expert = forms.BooleanField(
        required=False, label="I am a domain expert and want to sell models"
    )

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("password"):
            # The would-be user, so the similarity rule sees the email and display name.
            candidate = User(
                email=cleaned.get("email", ""), display_name=cleaned.get("display_name", "")
            )
            try:
                password_validation.validate_password(cleaned["password"], user=candidate)
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return cleaned


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, initial="My key")
    scopes = forms.MultipleChoiceField(
        choices=ApiKeyScope.choices,
        initial=DEFAULT_API_KEY_SCOPES,
        widget=forms.CheckboxSelectMultiple,
    )
    # The service checks the ceiling (the account's own limit).
    rate_limit_per_minute = forms.IntegerField(
        required=False,
        min_value=1,
        label="Rate limit (calls a minute)",
        help_text="Optional, below your account's limit; empty: your account's limit.",
    )


# Empty means "the platform's default"; the service checks ranges (LoraHyperparameters).
HYPERPARAMETER_FIELDS = {
    "n_epochs": forms.IntegerField,
    "batch_size": forms.IntegerField,
    "learning_rate": forms.FloatField,
    "lora_r": forms.IntegerField,
    "lora_alpha": forms.IntegerField,
    "lora_dropout": forms.FloatField,
    "max_seq_length": forms.IntegerField,
}


class FineTuneForm(forms.Form):
    """A ready dataset, a base model that supports its task, optional hyperparameters.

    Takes the owner's ready datasets and the enabled base models as lists, so the page
    reads each once. Unbound, it selects the first dataset and the first base model
    that fits it.
    """

    dataset = forms.ChoiceField(error_messages={"invalid_choice": "Choose one of your datasets."})
    base_model = forms.ChoiceField(
        error_messages={"invalid_choice": "Choose one of the base models offered."}
    )
    suffix = forms.CharField(required=False, max_length=40)

    def __init__(self, *args, datasets: list, base_models: list, **kwargs):
        super().__init__(*args, **kwargs)
        self.datasets = {str(d.pk): d for d in datasets}
        self.base_models = {b.slug: b for b in base_models}
        self.fields["dataset"].choices = [
            (key, f"{d.name} ({d.task})") for key, d in self.datasets.items()
        ]
        self.fields["base_model"].choices = [
            (slug, f"{b.display_name} — {', '.join(b.tasks)}")
            for slug, b in self.base_models.items()
        ]
        for name, field_class in HYPERPARAMETER_FIELDS.items():
            self.fields[name] = field_class(required=False)
        if not self.is_bound and datasets:
            self.initial.setdefault("dataset", str(datasets[0].pk))
            fitting = self.bases_for(datasets[0].task)
            if fitting:
                self.initial.setdefault("base_model", fitting[0].slug)

    def clean_suffix(self) -> str:
        suffix = self.cleaned_data["suffix"].lower()
        if not re.fullmatch(r"[a-z0-9-]*", suffix):
            raise forms.ValidationError("Lowercase letters, digits and dashes, at most 40.")
        return suffix

    def bases_for(self, task: str) -> list:
        return [b for b in self.base_models.values() if task in b.tasks]

    @property
    def hyperparameter_fields(self) -> list:
        return [self[name] for name in HYPERPARAMETER_FIELDS]

    def selected_dataset(self):
        return self.datasets.get(str(self["dataset"].value()))

    def dataset_options(self) -> list[dict]:
        chosen = str(self["dataset"].value())
        return [
            {
                "value": key,
                "label": label,
                "task": self.datasets[key].task,
                "selected": key == chosen,
            }
            for key, label in self.fields["dataset"].choices
        ]

    def base_model_options(self) -> list[dict]:
        """Every base model, marked whether it fits the selected dataset's task; the
        page hides the ones that do not (and its script re-marks them on change)."""
        dataset = self.selected_dataset()
        chosen = str(self["base_model"].value())
        return [
            {
                "value": slug,
                "label": label,
                "tasks": ",".join(self.base_models[slug].tasks),
                "fits": dataset is None or dataset.task in self.base_models[slug].tasks,
                "selected": slug == chosen,
            }
            for slug, label in self.fields["base_model"].choices
        ]

    def offers_a_fitting_base(self) -> bool:
        return any(option["fits"] for option in self.base_model_options())

    def clean(self):
        cleaned = super().clean()
        dataset = self.datasets.get(cleaned.get("dataset", ""))
        base = self.base_models.get(cleaned.get("base_model", ""))
        if dataset is not None and base is not None and dataset.task not in base.tasks:
            fitting = ", ".join(b.display_name for b in self.bases_for(dataset.task)) or "none"
            self.add_error(
                "base_model",
                f"{base.display_name} does not support {dataset.task}, the task of "
                f"{dataset.name}. Bases that do: {fitting}.",
            )
        return cleaned

    def job_arguments(self) -> dict:
        """Keyword arguments for training_worker.services.job_create."""
        data = self.cleaned_data
        return {
            "dataset_id": self.datasets[data["dataset"]].pk,
            "base_model": data["base_model"],
            "suffix": data["suffix"],
            "hyperparameters": {
                name: data[name] for name in HYPERPARAMETER_FIELDS if data.get(name) is not None
            },
        }
