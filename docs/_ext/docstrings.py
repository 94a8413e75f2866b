"""A griffe extension: the library's docstrings, written in PyTorch's dialect, as mkdocstrings'
Google-style Markdown.

The library's docstrings follow ``torch.nn``'s model (STYLE.md): Google sections (``Args:``,
``Returns:``, ``Raises:``) with reST inside them. This extension rewrites, before griffe parses a
docstring (and without touching the source):

- ``Example::`` (a reST literal block) into the Google ``Example:`` section;
- ``.. math::`` blocks and ``:math:`...``` into ``$$ ... $$`` / ``$...$``, which the
  ``pymdownx.arithmatex`` extension keeps away from Markdown and ``hooks.py`` renders as MathML;
- ``:func:``, ``:class:``, ``:meth:``, ``:attr:``, ``:data:`` and ``:mod:`` roles into links to the
  API reference, resolved like Python names from where the docstring is. A role that names a
  public object of ``weightnorm`` becomes a cross-reference (autorefs then fails a strict build
  if that object is not rendered on some page); one that names a private or external object
  (``torch.*``) becomes code; one that names nothing is a warning, so a strict build fails;
- an ``Args:`` entry for several parameters at once (``a, b (Tensor): ...``) into one entry each;
- Sphinx's ``#:`` comments above a constant into its docstring, and a class's ``Attributes:``
  entries into the docstrings of the attributes they describe.

Dunder methods of classes (``__repr__``, ``__post_init__``) are left out of what is rendered
(``__init__`` is merged into its class); the ``public`` filter of mkdocs.yml leaves out what is
not in a module's ``__all__``.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import textwrap
from typing import Any

import griffe

LOGGER = logging.getLogger("mkdocs.plugins.weightnorm.docstrings")

#: The public namespaces: ``weightnorm`` and the submodules the API reference documents whole.
PUBLIC_MODULES = ("", "functional", "optim", "dynamics", "formats")

_ROLE = re.compile(r":(func|class|meth|attr|data|mod|obj|math):`([^`]+)`")
_MATH_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n(?P<body>(?:(?:(?P=indent)[ \t]+\S.*)?\n)+)", re.M
)
_LITERAL_SECTION = re.compile(r"^([ \t]*)(Examples?)::[ \t]*$", re.M)
#: an ``Example::`` literal block: its title line, blank lines, the lines indented under it
_LITERAL_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)(?P<title>Examples?)::[ \t]*\n(?:[ \t]*\n)+"
    r"(?P<body>(?:(?P=indent)[ \t]+\S.*\n|[ \t]*\n)+)",
    re.M,
)
_SECTION = re.compile(r"^([ \t]*)(Args|Arguments|Parameters|Attributes):[ \t]*$")


def _public_objects(pkg: griffe.Module) -> set[str]:
    """The canonical paths of every object the API reference documents: the names exported by
    the public namespaces, and the public members of the classes among them."""
    found: set[str] = set()

    def add(obj: griffe.Object | griffe.Alias) -> None:
        target = obj.final_target if isinstance(obj, griffe.Alias) else obj
        if not isinstance(target, griffe.Object):
            return
        found.add(target.path)
        if isinstance(target, griffe.Class):
            for name, member in target.members.items():
                if not name.startswith("_"):
                    add(member)

    for sub in PUBLIC_MODULES:
        module = pkg[sub] if sub else pkg
        found.add(module.path)
        for name in module.exports or ():
            add(module[name])
    return found


#: Subpackages above the library, which the API reference does not document.
SKIPPED = ("experiments", "cli")


class Docstrings(griffe.Extension):
    """Rewrite every docstring of the library (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite once the whole object tree exists (name resolution needs it)."""
        if pkg.name != "weightnorm":
            return
        public = _public_objects(pkg)
        for obj in _walk(pkg):
            if obj.docstring is None and isinstance(obj, griffe.Attribute):
                _comment_docstring(obj)
            if isinstance(obj, griffe.Class):  # __repr__, __post_init__: Python's, not our API
                for name in [n for n in obj.members if _is_dunder(n) and n != "__init__"]:
                    del obj.members[name]
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj.docstring.value, obj, pkg, public)
        for obj in _walk(pkg):
            if isinstance(obj, griffe.Class) and obj.docstring is not None:
                _attribute_docstrings(obj)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for name, member in obj.members.items():
        if isinstance(member, griffe.Alias) or member.parent is not obj:
            continue
        if obj.parent is None and name in SKIPPED:
            continue
        found += _walk(member)
    return found


def _attribute_docstrings(cls: griffe.Class) -> None:
    """A class's ``Attributes:`` entries as the docstrings of the attributes they describe (a
    dataclass's fields have none of their own), so each is rendered once, with its text; the
    section itself is not shown (``show_docstring_attributes: false`` in mkdocs.yml)."""
    assert cls.docstring is not None
    for section in cls.docstring.parse("google"):
        if section.kind is not griffe.DocstringSectionKind.attributes:
            continue
        for item in section.value:
            member = cls.members.get(item.name)
            if isinstance(member, griffe.Attribute) and member.docstring is None:
                member.docstring = griffe.Docstring(item.description, parent=member)


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _comment_docstring(attr: griffe.Attribute) -> None:
    """Sphinx's ``#:`` comment lines just above an assignment, as the attribute's docstring."""
    if attr.lineno is None or attr.filepath is None or isinstance(attr.filepath, list):
        return
    try:
        lines = attr.lines_collection[attr.filepath]  # a LinesCollection: no .get()
    except KeyError:
        return
    comment: list[str] = []
    number = attr.lineno - 1  # 1-based line above the assignment
    while number >= 1 and lines[number - 1].lstrip().startswith("#:"):
        comment.insert(0, lines[number - 1].lstrip()[2:].strip())
        number -= 1
    if comment:
        attr.docstring = griffe.Docstring(
            "\n".join(comment), lineno=number + 1, endlineno=attr.lineno - 1, parent=attr
        )


def _rewrite(text: str, obj: griffe.Object, pkg: griffe.Module, public: set[str]) -> str:
    text = _LITERAL_BLOCK.sub(_literal_block, text + "\n")
    text = _LITERAL_SECTION.sub(r"\1\2:", text)
    text = _MATH_BLOCK.sub(_math_block, text)
    text = _ROLE.sub(lambda m: _role(m.group(1), m.group(2), obj, pkg, public), text)
    return _split_shared_entries(text)


def _literal_block(match: re.Match[str]) -> str:
    """``Example::`` and its indented block as a titled, fenced block: ``pycon`` (prompts and
    outputs highlighted, and left out by the copy button) when it starts with ``>>>``."""
    indent = match.group("indent")
    body = textwrap.dedent(match.group("body")).strip("\n").splitlines()
    language = "pycon" if body and body[0].startswith(">>>") else "python"
    fenced = [f"```{language}", *body, "```"]
    lines = [f"{match.group('title')}:", "", *fenced]
    return "".join(f"{indent}{line}\n" if line else "\n" for line in lines) + "\n"


def _math_block(match: re.Match[str]) -> str:
    indent = match.group("indent")
    body = " ".join(match.group("body").split())
    return f"{indent}$$\n{indent}{body}\n{indent}$$\n\n"


def _role(kind: str, target: str, obj: griffe.Object, pkg: griffe.Module, public: set[str]) -> str:
    if kind == "math":
        return f"${target}$"
    short = target.startswith("~")
    name = target.lstrip("~").removesuffix("()")
    text = name.rsplit(".", 1)[-1] if short else name
    path = _resolve(name, obj, pkg)
    if path is None:
        LOGGER.warning(f"{obj.relative_filepath}:{obj.lineno}: :{kind}:`{target}` names nothing")
        return f"`{text}`"
    if path in public:
        return f"[`{text}`][{path}]"
    return f"`{text}`"  # private, or outside the library (torch): code, not a link


def _resolve(name: str, obj: griffe.Object, pkg: griffe.Module) -> str | None:
    """The canonical path of ``name`` read where ``obj`` is, or None if it names nothing; a
    name outside the package resolves to itself (``torch.nn.Module``)."""
    if name.startswith("."):  # relative to the package of the docstring's module
        package = obj.module.path if obj.module.is_package else obj.module.parent.path  # type: ignore[union-attr]
        name = f"{package}{name}"
    head, _, rest = name.partition(".")
    if head == pkg.name:
        full = name
    else:
        start: str | None = None
        scope: griffe.Object | None = obj
        while scope is not None and start is None:
            try:
                start = scope.resolve(head)
            except griffe.NameResolutionError:
                scope = scope.parent
        if start is None:  # not a name there: a path in another package (torch.nn.Linear)?
            return name if "." in name and importlib.util.find_spec(head) is not None else None
        full = f"{start}.{rest}" if rest else start
    if not full.startswith(pkg.path + ".") and full != pkg.path:
        return full
    try:
        found = pkg[full.removeprefix(pkg.path + ".")] if full != pkg.path else pkg
    except KeyError:
        return None
    target = found.final_target if isinstance(found, griffe.Alias) else found
    return str(target.path)


def _split_shared_entries(text: str) -> str:
    """``a, b (Tensor): text`` in an ``Args:`` section -> ``a (Tensor): text`` and
    ``b (Tensor): text`` (the type after the last name is every untyped name's)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        header = _SECTION.match(line)
        if not header:
            continue
        item_indent: int | None = None
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > _indent(line)):
            entry = lines[i]
            if entry.strip() and item_indent is None:
                item_indent = _indent(entry)
            names = (
                _shared_names(entry) if entry.strip() and _indent(entry) == item_indent else None
            )
            if names is None:
                out.append(entry)
                i += 1
                continue
            body = [entry.split(": ", 1)[1]]
            i += 1
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > (item_indent or 0):
                body.append(lines[i])
                i += 1
            pad = " " * (item_indent or 0)
            for label in names:
                out.append(f"{pad}{label}: {body[0]}")
                out.extend(body[1:])
    return "\n".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


_ITEM = re.compile(r"^(\*{0,2}[A-Za-z_]\w*)(?: \(([^()]*)\))?$")


def _shared_names(entry: str) -> list[str] | None:
    """``["a (Tensor)", "b (Tensor)"]`` for ``a, b (Tensor): ...``; None for a one-name entry."""
    head, sep, _ = entry.strip().partition(": ")
    if not sep or len(_split_top(head)) < 2:
        return None
    items = [m for m in (_ITEM.match(part.strip()) for part in _split_top(head)) if m]
    if len(items) != len(_split_top(head)):
        return None
    last_type = items[-1].group(2)
    return [
        f"{m.group(1)} ({m.group(2) or last_type})" if (m.group(2) or last_type) else m.group(1)
        for m in items
    ]


def _split_top(head: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in head:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]
