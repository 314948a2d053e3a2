"""Documentation stays in step with the code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy

from proxy import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def declared_hooks() -> list[str]:
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, marker))


def test_hookspecs_are_found() -> None:
    names = declared_hooks()
    assert "register_providers" in names
    assert set(hookspecs.STAGES) <= set(names)
    # pluggy agrees with what we scanned.
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    assert sorted(pm.hook.__dict__) == names


def test_every_hook_is_documented_for_plugin_authors() -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    headings = set(re.findall(r"^### `(\w+)`", text, flags=re.MULTILINE))
    missing = [name for name in declared_hooks() if name not in headings]
    assert not missing, f"hooks missing from docs/plugins.md: {missing}"
    stale = sorted(headings - set(declared_hooks()))
    assert not stale, f"docs/plugins.md documents hooks that do not exist: {stale}"


def test_every_hook_is_documented_with_its_arguments() -> None:
    """The signature under each hook's heading names the spec's arguments, in order."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    documented = {}
    for section in sections:
        name = re.match(r"`(\w+)`", section)
        if name is None:
            continue
        call = re.search(rf"`{name[1]}\(([^)]*)\)", section)
        assert call is not None, f"docs/plugins.md: no `{name[1]}(...)` signature under its heading"
        documented[name[1]] = [a.strip() for a in call[1].split(",") if a.strip()]
    for name in declared_hooks():
        spec = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert documented.get(name) == spec, f"{name}: docs say {documented.get(name)}, the spec takes {spec}"


def test_every_hook_has_a_docstring() -> None:
    for name in declared_hooks():
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Called by the core" in doc and ":return:" in doc, name


def test_readme_points_plugin_authors_at_the_guide() -> None:
    assert "docs/plugins.md" in (ROOT / "README.md").read_text()


def test_every_server_key_is_documented() -> None:
    from dataclasses import fields

    from proxy.config.load import ServerSettings

    text = (ROOT / "docs" / "config.md").read_text()
    section = text.split("## `server`", 1)[1].split("\n## ", 1)[0]
    missing = [f.name for f in fields(ServerSettings) if f"`{f.name}`" not in section]
    assert not missing, f"server keys missing from docs/config.md: {missing}"
    readme = (ROOT / "README.md").read_text()
    assert "## Security" in readme
    limits = readme.split("## Security", 1)[1].split("\n## ", 1)[0]
    for name in ("max_connections", "header_timeout", "max_header_size", "body_timeout", "max_body_size"):
        assert f"`server.{name}`" in limits, name
