"""What an expert sees first in the studio, as Chromium lays it out and runs its script."""

import pytest

from training_worker.models import Dataset

pytestmark = [pytest.mark.integration]


def a_ready_dataset(owner, *, name: str, task: str) -> Dataset:
    return Dataset.objects.create(
        owner=owner, name=name, filename=f"{name}.csv", size_bytes=1, sha256="0" * 64,
        status="ready", task=task, train_rows=100, sealed_rows=25,
    )  # fmt: skip


def offered_bases(page) -> list[str]:
    return page.eval_on_selector(
        "#id_base_model", "s => [...s.options].filter(o => !o.disabled).map(o => o.value)"
    )


def open_the_studio_as_alice(page, live_server) -> None:
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "alice@example.com")
    page.fill("input[name=password]", "correct horse battery")  # tests.conftest.make_user
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/")
    page.goto(f"{live_server.url}/studio/")


def test_the_fine_tune_form_pairs_each_dataset_with_a_base_that_fits_it(
    page, live_server, shipped_base_models, alice
):
    triage = a_ready_dataset(alice, name="triage", task="text-classification")
    a_ready_dataset(alice, name="faq answers", task="text-generation")  # newest: listed first

    open_the_studio_as_alice(page, live_server)

    assert offered_bases(page) == ["smollm2-135m-instruct", "tiny-causal"]
    assert page.input_value("#id_base_model") == "smollm2-135m-instruct"  # the real base first

    page.select_option("#id_dataset", str(triage.id))

    assert offered_bases(page) == ["minilm-l6"]
    assert page.input_value("#id_base_model") == "minilm-l6"


def test_the_upload_help_reads_as_one_sentence_with_inline_code(page, live_server, alice):
    open_the_studio_as_alice(page, live_server)

    help_text = "form p:has-text('CSV with')"
    displays = page.eval_on_selector_all(
        f"{help_text} code", "codes => codes.map(c => getComputedStyle(c).display)"
    )
    assert displays == ["inline", "inline", "inline", "inline"]
    assert "CSV with text,label, or JSONL with {" in page.inner_text(help_text)
