"""Every relative link in the README, docs/*.md and infra/README.md leads somewhere: the file or folder exists, and
a `#anchor` into a markdown file names one of its headings as GitHub spells them. Links to the web are not
followed (no network here); code paths are written as `code`, not links, so they are not checked either."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "infra" / "README.md"]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# `](target)` or `](target "title")`: the closing half of every inline link and image, nested ones included.
INLINE_TARGET = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a fence closes with the same character, at least as long)."""
    lines, fence = [], ""
    for line in HTML_COMMENT.sub("", text).splitlines():
        opening = FENCE.match(line)
        if fence:
            if (
                opening
                and opening.group(1)[0] == fence[0]
                and len(opening.group(1)) >= len(fence)
                and not line.strip()[len(opening.group(1)) :].strip()
            ):
                fence = ""
            continue
        if opening:
            fence = opening.group(1)
            continue
        lines.append(line)
    return lines


def link_targets(text: str) -> list[str]:
    prose = "\n".join(CODE_SPAN.sub("", line) for line in prose_lines(text))
    targets = INLINE_TARGET.findall(prose) + REFERENCE_DEFINITION.findall(prose)
    return [target.strip("<>") for target in targets]


def heading_text(markdown: str) -> str:
    """A heading's text as GitHub renders it: code spans keep their content, links their text, no markup."""
    pieces, start = [], 0
    for match in CODE_SPAN.finditer(markdown):
        pieces += [without_markup(markdown[start : match.start()]), match.group(2).strip()]
        start = match.end()
    return "".join([*pieces, without_markup(markdown[start:])])


def without_markup(text: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not `-` or `_`), each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading_text(heading).strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    lines = prose_lines(text)
    for index, line in enumerate(lines):
        atx = ATX_HEADING.match(line)
        if atx:
            heading = atx.group(2) or ""
        elif (
            index + 1 < len(lines)
            and SETEXT_UNDERLINE.match(lines[index + 1])
            and line.strip()
            and not line.startswith(("    ", "\t", "|", "-", "*", ">"))
        ):
            heading = line.strip()
        else:
            found.update(HTML_ANCHOR.findall(line))
            continue
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def broken_links(page: Path, repo: Path = REPO) -> list[str]:
    problems = []
    for target in link_targets(page.read_text()):
        if not target or SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        if path_part.startswith("/"):
            resolved = (repo / path_part.lstrip("/")).resolve()
        else:
            resolved = (page.parent / path_part).resolve() if path_part else page
        shown = f"{page.relative_to(repo)}: ({target})"
        if not resolved.is_relative_to(repo.resolve()):
            problems.append(f"{shown} leaves the repository")
            continue
        if not resolved.exists():
            problems.append(f"{shown} does not exist")
            continue
        if (
            anchor
            and resolved.is_file()
            and resolved.suffix == ".md"
            and unquote(anchor).lower() not in anchors(resolved.read_text())
        ):
            problems.append(f"{shown} has no heading #{anchor}")
    return problems


def test_every_relative_link_in_the_docs_resolves() -> None:
    problems = [problem for page in PAGES if page.exists() for problem in broken_links(page)]
    assert problems == [], "\n".join(problems)


def test_the_pages_checked_include_the_readme_and_the_docs() -> None:
    assert (REPO / "README.md") in PAGES and len(PAGES) > 3
    assert all(page.exists() for page in PAGES)


def test_anchors_follow_githubs_rules() -> None:
    text = (
        "# What the drain costs (Flex Consumption)\n## How `mqtt_ingest` works\n### 6.8 Broker changes (cloud-init)\n"
        "## Alerts\n## Alerts\n## The `_acting_user` helper\n```sh\n# not a heading\n```\nSetext *title*\n---\n## [Linked](x.md) and **bold**\n"
    )
    assert anchors(text) == {
        "what-the-drain-costs-flex-consumption",
        "how-mqtt_ingest-works",
        "68-broker-changes-cloud-init",
        "alerts",
        "alerts-1",
        "the-_acting_user-helper",
        "setext-title",
        "linked-and-bold",
    }


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n## A section\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/other.md) [ok](docs/other.md#a-section) [ok](#top) [folder](docs/)\n"
        "[web](https://example.com/missing) `[code](missing.md)`\n"
        "```\n[in a fence](missing.md)\n```\n# Top\n"
        "[gone](docs/gone.md) [bad anchor](docs/other.md#no-such-section) ![img](docs/none.png)\n"
        "[self](#nowhere) [out](../outside.md)\n[ref]: docs/missing-ref.md\n"
    )
    problems = broken_links(page, repo=tmp_path)
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        "(docs/gone.md) does not exist",
        "(docs/other.md#no-such-section) has no heading #no-such-section",
        "(docs/none.png) does not exist",
        "(#nowhere) has no heading #nowhere",
        "(../outside.md) leaves the repository",
        "(docs/missing-ref.md) does not exist",
    ]
