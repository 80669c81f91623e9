"""Typed readers for environment variables.

Every setting that comes from the environment goes through one of these, so a bad
value stops the process at start-up with a message naming the variable instead of
failing later somewhere else.
"""

import os
from collections.abc import Callable
from typing import TypeVar

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")
_UNSET = object()

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _read(name: str, default, parse: Callable[[str], T]) -> T:
    raw = os.environ.get(name)
    if raw is None:
        if default is _UNSET:
            raise ImproperlyConfigured(f"The environment variable {name} is required.")
        return default
    try:
        return parse(raw)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"The environment variable {name}={raw!r} is invalid: {exc}"
        ) from exc


def env_str(name: str, default=_UNSET) -> str:
    return _read(name, default, str)


def env_bool(name: str, default=_UNSET) -> bool:
    def parse(raw: str) -> bool:
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ValueError("expected one of 1/0, true/false, yes/no, on/off")

    return _read(name, default, parse)


def env_int(name: str, default=_UNSET, *, minimum: int | None = None) -> int:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return _read(name, default, parse)


def env_float(name: str, default=_UNSET) -> float:
    return _read(name, default, lambda raw: float(raw.strip()))


def env_list(name: str, default=_UNSET) -> list[str]:
    return _read(name, default, lambda raw: [p.strip() for p in raw.split(",") if p.strip()])


def env_choice(name: str, default=_UNSET, *, choices: tuple[str, ...]) -> str:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return _read(name, default, parse)


def env_int_map(name: str, default=_UNSET, *, minimum: int | None = None) -> dict[str, int]:
    """``key=int`` pairs, comma-separated (``smollm2-135m-instruct=2048,tiny-causal=96``)."""

    def parse(raw: str) -> dict[str, int]:
        values = {}
        for item in (p.strip() for p in raw.split(",")):
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"expected key=integer pairs, got {item!r}")
            number = int(value.strip())
            if minimum is not None and number < minimum:
                raise ValueError(f"{key.strip()} must be at least {minimum}")
            values[key.strip()] = number
        return values

    return _read(name, default, parse)
