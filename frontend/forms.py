from django import forms
from django.contrib.auth import password_validation

from accounts.models import DEFAULT_API_KEY_SCOPES, ApiKeyScope


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
            password_validation.validate_password(cleaned["password"])
        return cleaned


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, initial="My key")
    scopes = forms.MultipleChoiceField(
        choices=ApiKeyScope.choices,
        initial=DEFAULT_API_KEY_SCOPES,
        widget=forms.CheckboxSelectMultiple,
    )
