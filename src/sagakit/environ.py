"""The saga log's URL, read from the environment without pydantic.

`settings.load_settings` builds every setting with pydantic-settings, which costs a call of
`sagakit list` or `sagakit show` more than its reads (about a fifth of a second). Those
commands need only where the saga log is: `database_url` says it, by the rules
`load_settings` itself takes the URL from (it calls `database_url`), so the two agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote

DATABASE_URL = "SAGAKIT_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///sagakit.db"
"""A SQLite file in the working directory."""


def database_url(env: Mapping[str, str] = os.environ) -> str:
    """SAGAKIT_DATABASE_URL (in any case, as pydantic-settings reads it); else a URL made
    of the seed's POSTGRES_* variables if POSTGRES_HOST is set; else the default."""
    if DATABASE_URL in env:
        return env[DATABASE_URL]
    named = next((v for k, v in env.items() if k.upper() == DATABASE_URL), None)
    if named is not None:
        return named
    if env.get("POSTGRES_HOST"):
        user = quote(env.get("POSTGRES_USER", "postgres"), safe="")
        password = quote(env.get("POSTGRES_PASSWORD", ""), safe="")
        auth = f"{user}:{password}" if password else user
        port = env.get("POSTGRES_PORT", "5432")
        database = env.get("POSTGRES_DB", user)
        return f"postgresql+psycopg://{auth}@{env['POSTGRES_HOST']}:{port}/{quote(database)}"
    return DEFAULT_DATABASE_URL
