"""pytest in docs/: the pages' ``>>>`` examples are doctests (``--doctest-glob=*.md``); the Python
files here are the site's tools (its MkDocs hooks and griffe extension need the ``docs`` extra),
not tests."""

collect_ignore_glob = ["*.py", "_ext"]
