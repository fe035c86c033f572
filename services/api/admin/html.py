"""The few self-contained HTML answers of login and access control (the UI's pages have templates)."""

from __future__ import annotations

from markupsafe import Markup, escape

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Mailing admin</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}
a{{color:#0b57d0}} a:focus,button:focus{{outline:3px solid #0b57d0;outline-offset:2px}}
code{{background:#f1f1f1;padding:0 .25em}}</style></head>
<body><main><h1>{title}</h1>{body}</main></body>
</html>
"""


def page(title: str, body: Markup | str) -> str:
    """A minimal page: `body` is escaped unless it is Markup."""
    return _PAGE.format(
        title=escape(title), body=body if isinstance(body, Markup) else Markup("<p>{}</p>").format(body)
    )
