"""Ready-to-paste code that calls a licensed specialist: curl, Python requests and the
openai client, with the listing's slug and the site's address filled in.

The key stays a placeholder (`$NICHE_KEY`): the portal never shows a key again after
its creation, and a snippet in a ticket or a chat must not carry one.
"""

import json
from dataclasses import dataclass

from serving.protocol import TEXT_CLASSIFICATION

KEY_VARIABLE = "NICHE_KEY"
SAMPLE_TEXT = "Paste the text to classify here."
SAMPLE_PROMPT = "Hello! What can you do?"
SAMPLE_MAX_TOKENS = 64


@dataclass(frozen=True)
class Snippet:
    name: str  # "curl", "python-requests", "openai"
    title: str
    language: str  # "shell" | "python"
    code: str


def call_snippets(*, site: str, slug: str, task: str, example: str = "") -> list[Snippet]:
    """Snippets for one listing, chosen by its task: classification calls
    `POST /api/v1/models/<slug>/predict`, generation the OpenAI-compatible
    `POST /v1/chat/completions` (which the openai client speaks).

    `site` is the portal's own address without a trailing slash
    (`https://niche.example`); `slug` the listing's, optionally pinned (`slug@2`);
    `example` the listing's example input (its expert wrote it), else a placeholder."""
    site = site.rstrip("/")
    if task == TEXT_CLASSIFICATION:
        return _classification(site, slug, example.strip() or SAMPLE_TEXT)
    return _generation(site, slug, example.strip() or SAMPLE_PROMPT)


def _classification(site: str, slug: str, sample_text: str) -> list[Snippet]:
    url = f"{site}/api/v1/models/{slug}/predict"
    body = {"inputs": [sample_text]}
    return [
        Snippet("curl", "curl", "shell", _curl(url, body)),
        Snippet(
            "python-requests",
            "Python (requests)",
            "python",
            f"""import os

import requests

response = requests.post(
    "{url}",
    headers={{"Authorization": f"Bearer {{os.environ['{KEY_VARIABLE}']}}"}},
    json={{"inputs": [{json.dumps(sample_text)}]}},
    timeout=60,
)
response.raise_for_status()
for prediction in response.json()["predictions"]:
    print(prediction["label"], prediction["scores"])
""",
        ),
    ]


def _generation(site: str, slug: str, sample_prompt: str) -> list[Snippet]:
    url = f"{site}/v1/chat/completions"
    messages = [{"role": "user", "content": sample_prompt}]
    body = {"model": slug, "messages": messages, "max_tokens": SAMPLE_MAX_TOKENS}
    # A model fine-tuned on prompt/completion pairs answers best to the same plain prompt
    # (chat messages are rendered as a transcript or with the base's chat template).
    plain = {"model": slug, "prompt": sample_prompt, "max_tokens": SAMPLE_MAX_TOKENS}
    return [
        Snippet("curl", "curl", "shell", _curl(url, body)),
        Snippet(
            "curl-completions",
            "curl, plain prompt (models fine-tuned on prompt/completion pairs)",
            "shell",
            _curl(f"{site}/v1/completions", plain),
        ),
        Snippet(
            "python-requests",
            "Python (requests)",
            "python",
            f"""import os

import requests

response = requests.post(
    "{url}",
    headers={{"Authorization": f"Bearer {{os.environ['{KEY_VARIABLE}']}}"}},
    json={{
        "model": "{slug}",
        "messages": [{{"role": "user", "content": {json.dumps(sample_prompt)}}}],
        "max_tokens": {SAMPLE_MAX_TOKENS},
    }},
    timeout=60,
)
response.raise_for_status()
print(response.json()["choices"][0]["message"]["content"])
""",
        ),
        Snippet(
            "openai",
            "Python (openai client)",
            "python",
            f"""import os

from openai import OpenAI

client = OpenAI(base_url="{site}/v1", api_key=os.environ["{KEY_VARIABLE}"])
reply = client.chat.completions.create(
    model="{slug}",
    messages=[{{"role": "user", "content": {json.dumps(sample_prompt)}}}],
    max_tokens={SAMPLE_MAX_TOKENS},
)
print(reply.choices[0].message.content)
""",
        ),
    ]


def _curl(url: str, body: dict) -> str:
    # Single quotes around the JSON: the shell passes it as is; a quote inside (an
    # expert's example input may hold one) closes, escapes and reopens the quoting.
    quoted = json.dumps(body).replace("'", "'\\''")
    return (
        f"curl -sS -X POST {url} \\\n"
        f'  -H "Authorization: Bearer ${KEY_VARIABLE}" \\\n'
        f'  -H "Content-Type: application/json" \\\n'
        f"  -d '{quoted}'\n"
    )
