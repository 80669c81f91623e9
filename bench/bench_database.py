"""A Postgres database of a bench's own beside the one DATABASE_URL names (created once)."""

from urllib.parse import urlparse, urlunparse


def bench_database_url(base: str, suffix: str) -> str:
    parsed = urlparse(base)
    name = parsed.path.lstrip("/") or "niche"
    return urlunparse(parsed._replace(path=f"/{name}_bench_{suffix}"))


def ensure_database(url: str) -> None:
    import psycopg

    parsed = urlparse(url)
    admin = urlunparse(parsed._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        name = parsed.path.lstrip("/")
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
