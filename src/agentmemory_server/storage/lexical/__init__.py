"""Lexical engines shared by every backend: Tantivy (tantivy_index.py, the index's layout in
tantivy_schema.py) with its pending tail (tantivy_tail.py), fed through the small interface in
feed.py. A backend supplies the feed (its outbox and search rows); the engine code is the same
for SQLite and PostgreSQL."""
