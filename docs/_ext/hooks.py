"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml).

- Math: ``pymdownx.arithmatex`` (generic mode) marks ``$...$`` and ``$$...$$``; here each is
  rendered to MathML at build time, which browsers draw natively: no JavaScript, no fonts, nothing
  fetched when a page is viewed. A formula that does not convert is a warning (a strict build
  fails).
- Completeness: after the build, every public name (``weightnorm.__all__`` and the ``__all__`` of
  the public submodules) must have an anchor on some page of the API reference, under its public
  or its canonical path; a missing one is a warning (a strict build fails).
"""

from __future__ import annotations

import html
import importlib
import logging
import re
from typing import Any

LOGGER = logging.getLogger("mkdocs.plugins.weightnorm.hooks")

#: The namespaces whose every exported name the API reference documents.
PUBLIC_MODULES = (
    "weightnorm",
    "weightnorm.functional",
    "weightnorm.optim",
    "weightnorm.dynamics",
    "weightnorm.formats",
)

_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)
_ANCHOR = re.compile(r'\bid="([^"]+)"')

_anchors: set[str] = set()


#: A command latex2mathml did not know: it writes it out as text (``<mi>\\foo</mi>``).
_UNKNOWN_COMMAND = re.compile(r">\\[A-Za-z]+")


def _balanced(source: str) -> bool:
    depth = 0
    for char in re.sub(r"\\[{}]", "", source):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _mathml(latex: str, display: str, where: str) -> str:
    from latex2mathml.converter import convert

    source = html.unescape(latex).strip()
    try:
        if not _balanced(source):
            raise ValueError("unbalanced braces")
        mathml = convert(source, display=display)
        unknown = _UNKNOWN_COMMAND.search(mathml)
        if unknown:
            raise ValueError(f"unknown command {unknown.group(0)[1:]}")
        return mathml
    except Exception as err:  # latex2mathml raises its own exception types, and a few others
        LOGGER.warning(f"{where}: math that does not render: {source!r} ({err})")
        return f"<code>{html.escape(source)}</code>"


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    """Render the page's math; remember its anchors."""
    where = page.file.src_uri
    html_text = _BLOCK.sub(lambda m: _mathml(m.group(1), "block", where), html_text)
    html_text = _INLINE.sub(lambda m: _mathml(m.group(1), "inline", where), html_text)
    _anchors.update(_ANCHOR.findall(html_text))
    return html_text


def on_pre_build(**kwargs: Any) -> None:
    """Start each build (``mkdocs serve`` rebuilds) with no anchors seen."""
    _anchors.clear()


def _canonical(value: object, public: str) -> str:
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    return f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else public


def on_post_build(**kwargs: Any) -> None:
    """Warn for every public name that no page documents."""
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            public = f"{module_name}.{name}"
            if hasattr(value, "__all__") and getattr(value, "__name__", "") == public:
                paths = {public}  # a public submodule: its own page
            else:
                paths = {public, _canonical(value, public)}
            if not paths & _anchors:
                LOGGER.warning(f"{public} is public but no page of the API reference documents it")
