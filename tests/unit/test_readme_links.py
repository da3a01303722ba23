"""README.md is also the package's long description on an index (pyproject ``readme``), where a link
relative to the repository breaks. So: every link in it must resolve, a relative one to a file that the
sdist ships, an absolute one to a known public host (no public repository of lbnl is known, so none may
be invented); every file the text names by path (``docs/serve.md``...) must exist and be in the sdist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from email.parser import Parser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: Hosts README may link to: public and real. Add one only with a link that is known to resolve.
KNOWN_HOSTS = {"arxiv.org"}

FENCED = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
HTML_ATTR = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']*)["']""", re.I)
AUTOLINK = re.compile(r"<([a-z][a-z0-9+.-]*:[^>\s]*)>", re.I)
BARE_URL = re.compile(r"(?<![(<\w/])(?:https?|ftp)://[^\s)>\]`]+", re.I)
#: Files the text names by path, e.g. `docs/serve.md`, examples/langchain_rerank.py.
NAMED_PATH = re.compile(r"(?<![\w./-])((?:docs|examples|configs|scripts|bench|tests)/[\w.-]+(?:/[\w.-]+)*\.\w+)")


def readme_links(text: str) -> list[str]:
    """Every link target in Markdown ``text``: inline, reference-style, HTML, autolinks and bare URLs."""
    prose = FENCED.sub("", text)
    found = [m.group(1) for pattern in (INLINE_LINK, REFERENCE_DEF, HTML_ATTR, AUTOLINK) for m in pattern.finditer(prose)]
    without_links = INLINE_LINK.sub("", AUTOLINK.sub("", REFERENCE_DEF.sub("", prose)))
    return found + BARE_URL.findall(without_links)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of ``text``."""
    headings = re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", FENCED.sub("", text), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def source_files() -> list[str]:
    """The tree's files as a clone has them: tracked or new, never ignored (no egg-info, caches, runs)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                check=True, capture_output=True).stdout.decode()
        return [f for f in listed.split("\0") if f and (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):  # an unpacked sdist: everything but build output
        skip = {"__pycache__", ".git", "build", "dist", ".make"}
        return [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
                and not any(part.endswith(".egg-info") for part in p.parts)]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], str]:
    """The files of the sdist built from a clean copy of this tree (paths inside it) and its PKG-INFO.

    A copy, because setuptools adds the files listed in an existing ``*.egg-info/SOURCES.txt`` (as an
    editable install leaves one) to every sdist: in place, a file MANIFEST.in leaves out could still pass.
    """
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("sdist")
    for name in source_files():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
                    str(out)], cwd=tree, check=True, capture_output=True)
    (tarball,) = out.glob("lbnl-*.tar.gz")
    with tarfile.open(tarball) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name and m.isfile()}
        pkg_info = tar.extractfile(members["PKG-INFO"]).read().decode()
    return set(members), pkg_info


def test_the_link_finder_finds_every_kind() -> None:
    text = ("[a](docs/a.md) ![i](docs/i.png \"t\") <https://example.com/x> see https://example.org/y.\n"
            "[r]: ./examples/r.py\n<a href=\"docs/h.md\">h</a>\n```\n[not](a-link)\n```\n")
    assert sorted(readme_links(text)) == sorted(["docs/a.md", "docs/i.png", "https://example.com/x",
                                                 "https://example.org/y.", "./examples/r.py", "docs/h.md"])
    assert NAMED_PATH.findall("see `docs/serve.md` and examples/x.py, not mydocs/y.md") == ["docs/serve.md",
                                                                                          "examples/x.py"]


def test_every_readme_link_resolves(sdist: tuple[set[str], str]) -> None:
    files, _ = sdist
    text = README.read_text()
    links = readme_links(text)
    assert links, "README links to the paper at least"
    for link in links:
        parts = urlsplit(link)
        if parts.scheme or parts.netloc:
            assert parts.scheme == "https" and parts.hostname in KNOWN_HOSTS, f"{link}: not a known public host"
        elif parts.path:
            target = (README.parent / parts.path).resolve()
            assert target.is_file(), f"{link}: no such file"
            relative = target.relative_to(ROOT).as_posix()
            assert relative in files, f"{link}: {relative} is not in the sdist (MANIFEST.in)"
        else:
            assert parts.fragment in heading_anchors(text), f"{link}: no such heading"


def test_every_path_readme_names_is_shipped(sdist: tuple[set[str], str]) -> None:
    files, _ = sdist
    named = set(NAMED_PATH.findall(README.read_text()))
    assert {"docs/serve.md", "docs/results.md", "examples/langchain_rerank.py"} <= named
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"README names files that do not exist: {missing}"
    unshipped = sorted(named - files)
    assert not unshipped, f"README names files the sdist leaves out: {unshipped}"


def test_the_long_description_is_the_readme(sdist: tuple[set[str], str]) -> None:
    files, pkg_info = sdist
    meta = Parser().parsestr(pkg_info)
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().strip() == README.read_text().strip()
    for entry in meta.get_all("Project-URL") or []:
        url = entry.split(",", 1)[1].strip()
        assert urlsplit(url).hostname in KNOWN_HOSTS, f"Project-URL {url}: not a known public host"
    assert {"README.md", "pyproject.toml", "MANIFEST.in", "Makefile"} <= files
