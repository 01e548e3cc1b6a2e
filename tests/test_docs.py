"""The README, ``CHANGELOG.md`` and the pages of ``docs/`` it links to: every relative link, image
and ``#anchor`` resolves, every page is reachable from the README, and the README's test command
is the one ``.ci/run`` runs (the reference was split from one README into pages: a heading
renamed or a page moved breaks a link here, not in a reader's hands)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks and code spans (a link there is no link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = _slug(heading)
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:  # GitHub numbers a repeated heading's anchor: name, name-1, ...
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def broken_links(page: pathlib.Path) -> list[str]:
    """Each relative link or image of ``page`` whose file or ``#anchor`` does not exist."""
    broken = []
    for target in re.findall(r"\]\(<?([^)\s>]+)>?(?: \"[^\"]*\")?\)", _prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path) if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no such anchor in {dest.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    assert not broken_links(page), broken_links(page)


def test_a_broken_link_or_anchor_is_found(tmp_path):
    """The check itself: a missing file, a missing anchor, an anchor of another page."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: `x`, (y)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Here\n\n[ok](other.md#a-section-x-y) [ok](#here) [gone](nothere.md)\n"
        "[no anchor](other.md#a-section) [not here](#other-page) `[code](nothere.md)`\n"
        '![titled](gone.png "a title")\n'
        "```\n[fenced](nothere.md)\n```\n"
    )
    assert broken_links(page) == [
        "nothere.md: no such file",
        "other.md#a-section: no such anchor in other.md",
        "#other-page: no such anchor in page.md",
        "gone.png: no such file",
    ]


def test_every_docs_page_is_linked_from_the_readme():
    """A page the README does not link to is one no reader finds."""
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in PAGES[2:] if f"](docs/{p.name}" not in readme]
    assert "](CHANGELOG.md)" in readme and not unlinked, unlinked


def test_the_pages_carry_no_history_and_no_internal_task_names():
    """A page says how fstack_dask behaves now; what changed goes in CHANGELOG.md, in words a
    user understands: docs/safety.md carried 76 lines of history ("until g92 it was printed
    ...", "until 2026-12-07 re-encoded by aiohttp"), and gNN, an engineer's task, means nothing
    to a microscopist."""
    task, history = re.compile(r"\bg\d{2,3}\b"), re.compile(r"\b[Uu]ntil (?:g\d+|\d{4}-\d\d-\d\d)")
    pages = [*PAGES, ROOT / "configs" / "README.md"]
    found = [f"{p}: {m}" for p in pages for m in task.findall(_prose(p.read_text()))]
    found += [f"{p}: {m}" for p in pages if p.name != "CHANGELOG.md"
              for m in history.findall(_prose(p.read_text()))]  # fmt: skip
    assert not found, found


def test_the_readme_s_test_command_is_the_one_ci_runs():
    """The quick start's second command is what ``.ci/run`` runs, byte for byte."""
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^```bash\n(.*?)\n```", readme, flags=re.M | re.S)
    ci = (ROOT / ".ci" / "run").read_text().rstrip("\n").splitlines()[-1]
    assert commands[1] == ci, (commands[1], ci)


# A section named where the package, its configs or its benchmarks point a reader:
# (README, "Bad input"), the README's 'Reading the result', "X" in docs/algorithm.md, ...
_CITED = re.compile(
    r"""(README|docs/\w+\.md)(?:'s|,)? ["']([A-Z][^"']{2,60})["']"""
    r"""|["']([A-Z][^"']{2,60})["'] in (?:the )?(README|docs/\w+\.md)"""
)


def test_every_section_the_package_and_its_files_cite_is_there():
    """A message or comment citing a section of the README that moved to docs/ sends the
    reader to nothing: the warning of fewer than 5 planes said "(README, 'Differences from
    the reference')" once that section lay in docs/algorithm.md. Each cited section is a
    heading or a paragraph's bold lead of the page named."""
    files = [*ROOT.glob("fstack_dask/**/*.py"), *ROOT.glob("configs/*.md"), ROOT / "pyproject.toml"]
    files += [*ROOT.glob("benchmarks/*.md"), *ROOT.glob("benchmarks/*.py"), *PAGES]
    files += [*ROOT.glob("benchmarks/*.sh"), *ROOT.glob("docs/*.py")]
    missing, cited = [], 0
    for file in files:
        text = re.sub(r"\"\s*\n\s*f?\"", "", file.read_text())  # "...the " "reference'..."
        text = " ".join(text.replace("#", " ").split())  # comments wrapped over lines
        for m in _CITED.finditer(text):
            page, name = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
            page = ROOT / ("README.md" if page == "README" else page)
            body = " ".join(page.read_text().split())
            cited += 1
            if _slug(name) not in anchors(page) and f"**{name}" not in body:
                missing.append(f"{file.relative_to(ROOT)}: {page.name} has no {name!r}")
    assert cited and not missing, missing


def test_the_readme_names_each_dependency_and_docs_say_why():
    """The README's short list names every dependency and links to docs/dependencies.md, which
    names each dependency and every extra (with the reason for it)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    readme = (ROOT / "README.md").read_text().split("\n## Dependencies\n", 1)[1]
    readme = readme.split("\n## ", 1)[0].lower()
    assert "](docs/dependencies.md)" in readme
    assert not [n for n in names if n not in readme], names
    page = (ROOT / "docs" / "dependencies.md").read_text()
    assert not [n for n in names if n not in page.lower()], names
    extras = [e for e in project["optional-dependencies"] if e != "test"]
    assert not [e for e in extras if f"`{e}`" not in page], extras


def _commands(text: str) -> list[str]:
    """Each whole ``fstack-dask fuse|info|demo`` command line of a page: a line of a fenced
    block (its comment cut off) and a code span (``...`` marks a fragment, left out)."""
    found = []
    for block in re.findall(r"^```(?:bash|sh|text)?\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.splitlines():
            m = re.search(r"(?:^|&& )fstack-dask ((?:fuse|info|demo) .*)", line)
            if m and "[" not in m.group(1):  # (a synopsis: [--option VALUE])
                found.append(re.split(r"\s+#", m.group(1))[0])
    spans = re.findall(r"`fstack-dask ((?:fuse|info|demo) [^`]*)`", _prose_code(text))
    spans = [c for c in spans if "..." not in c and c != "fuse SRC"]  # (naming the argument)
    places = {"SRC": "stack.zarr", "DST": "fused.ome.zarr", "DIR": "demo-out"}
    return found + [re.sub(r"\b(SRC|DST|DIR)\b", lambda m: places[m[1]], c) for c in spans]


def _prose_code(text: str) -> str:
    """The text outside fenced code blocks, code spans kept."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def test_every_command_line_in_the_docs_parses_as_written():
    """A command a reader copies runs with the options as the docs spell them: each whole
    ``fstack-dask`` command of the README, docs/ and configs/README.md is parsed by the real
    parser (an option renamed, a value no longer a choice, a missing DST fail here). The
    README's caption gave ``fstack-dask fuse "pcb/pcb_*.jpg"``, without the DST it needs."""
    import shlex

    from fstack_dask._cli.args import UsageError, build_parser

    parser, failed, seen = build_parser(), [], 0
    for page in [*PAGES, ROOT / "configs" / "README.md"]:
        for command in _commands(page.read_text()):
            seen += 1
            try:
                parser.parse_args(shlex.split(command))
            except (UsageError, SystemExit) as exc:
                failed.append(f"{page.name}: fstack-dask {command}: {exc}")
    assert seen > 20 and not failed, failed
