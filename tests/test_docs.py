"""The documentation stands on its own: no file the reader does not have, every relative link to
a file of the repository, one uvicorn command, and every HTTP API route documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wshub.server.app import create_app

from .conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
#: Mentions of files that live outside the repository (notes of the project's authors).
OUTSIDE = re.compile(r"shared/|PERF-NOTES|seed guide|(?-i:PROTOCOL\.md)", re.IGNORECASE)
#: [text](target) in Markdown; the target up to a space or ")".
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_no_doc_mentions_a_file_outside_the_repository(doc: Path) -> None:
    found = [
        f"{_name(doc)}:{n}: {line.strip()}"
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_every_relative_link_points_to_a_file_of_the_repository(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or a heading of the same page
        path = target.split("#", 1)[0]
        if not (doc.parent / path).resolve().exists():
            broken.append(target)
    assert not broken, f"{_name(doc)} links to missing files: {broken}"


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    """The check above can fail: a link to a missing file is found by the same pattern."""
    (tmp_path / "page.md").write_text("see [the notes](../shared/NOTES.md) and [x](#y)")
    targets = LINK.findall((tmp_path / "page.md").read_text())
    assert targets == ["../shared/NOTES.md", "#y"]
    assert not (tmp_path / targets[0]).exists()


def _uvicorn_command(text: str) -> str:
    """The first ``uvicorn myapp:app ...`` command of a page, continuations joined."""
    match = re.search(r"^uvicorn myapp:app .*?(?<!\\)$", text, re.MULTILINE | re.DOTALL)
    assert match, "no uvicorn command"
    return " ".join(match.group(0).replace("\\\n", " ").split())


def test_the_guide_and_deployment_give_one_uvicorn_command() -> None:
    guide = _uvicorn_command((ROOT / "docs" / "guide.md").read_text())
    deployment = _uvicorn_command((ROOT / "docs" / "deployment.md").read_text())
    assert guide == deployment
    assert "--ws wshub.native:HubProtocol" in guide
    assert "--http wshub.uvicorn_protocols:GuardedHttpProtocol" in guide
    options = guide.removeprefix("uvicorn myapp:app")
    for example in ("examples/fastapi_app.py", "examples/django_project/asgi.py"):
        text = " ".join((ROOT / example).read_text().replace("\\\n", " ").split())
        assert options in text, example


def test_every_http_api_route_and_error_is_in_the_http_api_page() -> None:
    page = (ROOT / "docs" / "http-api.md").read_text()
    schema = create_app(make_settings()).openapi()
    for path, operations in schema["paths"].items():
        for method in operations:
            if path.startswith("/api"):
                assert f"`{method.upper()} {path}`" in page, (method, path)
                example = re.sub(r"\{[^}]+\}", '[^ /"?]+', path)
                assert re.search(rf"curl [^\n]*\$WSHUB{example}", page), (method, path)
            else:
                assert f"`{method.upper()} {path}`" in page, (method, path)
    for status in (401, 404, 408, 413, 422, 503):
        assert re.search(rf"^\| {status} \|", page, re.MULTILINE), status
    assert "Authorization: Bearer $KEY" in page
    readme = (ROOT / "README.md").read_text()
    assert "(docs/http-api.md)" in readme
