"""The catalogue at scale (bench/catalogue.py, 100,000 listings), on Postgres only.

- `search_vector`: a stored generated tsvector of title (A), tags and summary (B) and
  description (C), with a GIN index. Search matched `to_tsvector(...)` computed for every
  row (seconds at 100k); now it reads the index and ranks the stored vectors. The column is
  Postgres's, not the model's: Django never writes it, the selector reads it by name, and
  SQLite (the embedded default) keeps its substring search.
- A trigram GIN index on the tags' text (pg_trgm): the tag filter is a substring match,
  and the index also gives the planner statistics on that expression, so it no longer
  guesses a rare tag and sorts the whole table.
- One partial index per sort, in the exact order the selector asks for (nulls last, id as
  the tie-break) and only over published rows: a page is an index walk, not a sort of
  every published row.
"""

from django.db import migrations

SEARCH_VECTOR = """
    setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A')
    || setweight(to_tsvector('english'::regconfig, coalesce(tags::text, '')), 'B')
    || setweight(to_tsvector('english'::regconfig, coalesce(summary, '')), 'B')
    || setweight(to_tsvector('english'::regconfig, coalesce(description, '')), 'C')
"""
SORT_INDEXES = {
    "listing_pub_newest": "published_at DESC NULLS LAST, id DESC",
    "listing_pub_lift": "lift_over_generalist DESC NULLS LAST, id DESC",
    "listing_pub_rating": "rating_avg DESC NULLS LAST, id DESC",
    "listing_pub_popularity": "popularity DESC NULLS LAST, id DESC",
    "listing_pub_price_asc": "min_price_minor ASC NULLS LAST, id ASC",
    "listing_pub_price_desc": "min_price_minor DESC NULLS LAST, id DESC",
}
FORWARD = [
    f"ALTER TABLE listings_listing ADD COLUMN search_vector tsvector "
    f"GENERATED ALWAYS AS ({SEARCH_VECTOR}) STORED",
    "CREATE INDEX listing_search_vector_gin ON listings_listing USING gin (search_vector)",
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX listing_tags_trgm ON listings_listing "
    "USING gin ((upper(tags::text)) gin_trgm_ops)",
    *(
        f"CREATE INDEX {name} ON listings_listing ({columns}) WHERE status = 'published'"
        for name, columns in SORT_INDEXES.items()
    ),
    "ANALYZE listings_listing",
]
BACKWARD = [
    *(f"DROP INDEX IF EXISTS {name}" for name in SORT_INDEXES),
    "DROP INDEX IF EXISTS listing_tags_trgm",
    "DROP INDEX IF EXISTS listing_search_vector_gin",
    "ALTER TABLE listings_listing DROP COLUMN IF EXISTS search_vector",
]


def run_on_postgres(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for statement in statements:
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("listings", "0003_lift_over_strongest_baseline")]

    operations = [migrations.RunPython(run_on_postgres(FORWARD), run_on_postgres(BACKWARD))]
