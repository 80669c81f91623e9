"""The static files middleware serves the same bytes on the event loop as in a thread."""

import warnings
from pathlib import Path

from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

from marketplace.static_files import CHUNK_BYTES


async def _get(path, **headers):
    response = await AsyncClient().get(path, headers=headers)
    body = b""
    if response.streaming and response.is_async:
        body = b"".join([chunk async for chunk in response.streaming_content])
    elif response.streaming:  # the test client empties a 304's body with a list
        body = b"".join(response.streaming_content)
    return response, body


def _get_on_loop(path, **headers):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return async_to_sync(_get)(path, **headers)


def test_a_large_file_streams_in_chunks_on_the_event_loop(settings, tmp_path):
    payload = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7)
    (tmp_path / "big.bin").write_bytes(payload)
    settings.WHITENOISE_ROOT = tmp_path

    response, body = _get_on_loop("/big.bin")

    assert response.status_code == 200
    assert response.is_async  # not read whole into memory by Django's ASGI handler
    assert body == payload
    assert response["Content-Length"] == str(len(payload))


def test_a_stylesheet_is_served_with_its_type_and_a_validator(settings):
    settings.WHITENOISE_USE_FINDERS = True
    css = (Path(settings.BASE_DIR) / "frontend/static/frontend/niche.css").read_bytes()

    response, body = _get_on_loop("/static/frontend/niche.css")

    assert response.status_code == 200
    assert body == css
    assert response["Content-Type"].startswith("text/css")
    again, again_body = _get_on_loop("/static/frontend/niche.css", if_none_match=response["ETag"])
    assert (again.status_code, again_body) == (304, b"")


def test_the_threaded_path_serves_the_same_bytes(settings, tmp_path):
    (tmp_path / "small.txt").write_bytes(b"niche\n")
    settings.WHITENOISE_ROOT = tmp_path

    response = Client().get("/small.txt")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"niche\n"


def test_a_page_that_is_not_a_static_file_passes_through_on_the_event_loop(settings):
    response, _ = _get_on_loop("/definitely-not-a-page/")
    assert response.status_code == 404
