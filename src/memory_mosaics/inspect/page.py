"""The explorer page: one self-contained HTML file (no network, no CDN).

The page's script and style are package data (``assets/``: ``page.html`` the frame, ``page.css``,
``page.js``, and one body per mode); the data (:mod:`.export`) is embedded as JSON in a
``<script type="application/json">`` element, with every ``<`` written ``\\u003c`` so that no string
can close the element or open a comment.
"""

from __future__ import annotations

import json
import os
from importlib import resources

from ..io import atomic_write_text

MODES = ("language", "moons")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def render_page(data: dict) -> str:
    """The HTML text of the page showing ``data`` (``data["kind"]`` in MODES)."""
    if data.get("kind") not in MODES:
        raise ValueError(f"page data kind must be one of {MODES}, got {data.get('kind')!r}")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    payload = payload.replace("<", "\\u003c")  # "<" only occurs in strings: no "</script>" or "<!--" left
    parts = {"CSS": _asset("page.css"), "BODY": _asset(f"{data['kind']}.html"), "JS": _asset("page.js")}
    html = _asset("page.html")
    for key, text in parts.items():
        html = html.replace("{{" + key + "}}", text)
    return html.replace("{{DATA}}", payload)


def write_page(data: dict, path: str | os.PathLike) -> int:
    """Write the page atomically; returns its size in bytes."""
    html = render_page(data)
    atomic_write_text(path, html)
    return len(html.encode("utf-8"))


def write_json(data: dict, path: str | os.PathLike) -> int:
    """The same data as a JSON file (for notebooks); returns its size in bytes."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    atomic_write_text(path, text)
    return len(text.encode("utf-8"))
