#!/usr/bin/env python3
"""Build lbnl-small v2's training and held-out data from Debian packages and SciFact train, offline.

    python scripts/build_training_data.py --scifact path/to/scifact --out data/v2

One command, deterministic (seeded sampling, sorted inputs, pinned package versions). It
``apt-get download``s the pinned .deb files into ``<out>/debs`` (skipped when present with the
recorded sha256), unpacks them with ``dpkg-deb -x`` and writes:

- ``<out>/train.jsonl``: groups ``{"query_id", "query", "positive", "negatives"}`` (the
  ``data.source: jsonl`` format of ``lbnl train``) from WordNet glosses, GCIDE, FOLDOC and the
  Jargon File (headword -> definition, question templates) and SciFact train queries (minus the 60
  queries v1 held out), each with BM25 hard negatives mined within its own source plus random ones.
- ``<out>/heldout/manpages`` and ``<out>/heldout/pydocs``: BEIR directories (corpus.jsonl,
  queries.jsonl, qrels/dev.tsv, qrels/test.tsv) built from sources that are never trained on: Linux
  man pages (NAME line -> DESCRIPTION) and the Python 3.11 documentation (section heading -> section).
- ``<out>/manifest.json``: every package, version, license, .deb sha256, counts, and the sha256 of
  every output file.

``--packages N`` (lbnl-small v6's data, ``--out data/v3``) appends N groups from Debian's package
descriptions (bookworm ``main/i18n/Translation-en.xz``, pinned by the sha256 that the signed ``InRelease``
lists): query = a package's one-line description, positive = ``<package>: <long description>``, BM25 +
random negatives among the other packages. Every other output is byte-identical to the default build
(``train.jsonl`` of v2 is a prefix of v3's).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

SEED = 16
PACKAGES = {
    # name: (version, license, role)
    "wordnet-base": ("1:3.0-37", "WordNet 3.0 license (Princeton, BSD-like)", "train"),
    "dict-gcide": ("0.48.5+nmu2", "GPL-3+ (GNU Collaborative International Dictionary of English)", "train"),
    "dict-foldoc": ("20230119-1", "GFDL-1.1+ (Free On-line Dictionary of Computing)", "train"),
    "dict-jargon": ("4.4.7-3.1", "public domain (The Jargon File 4.4.7)", "train"),
    "manpages": ("6.03-2", "Linux man-pages licenses (GPL/BSD/verbatim, per page)", "heldout"),
    "manpages-dev": ("6.03-2", "Linux man-pages licenses (GPL/BSD/verbatim, per page)", "heldout"),
    "python3.11-doc": ("3.11.2-6+deb12u9", "PSF-2.0 (Python documentation)", "heldout"),
}
COUNTS = {"wordnet": 2000, "gcide": 1000, "foldoc": 1200, "jargon": 600}
SCIFACT_REPEAT = 2          # SciFact train groups are listed twice (new negatives each time): ~1/3 of lists
BM25_NEGATIVES = 20         # hard negatives per group (BM25 within the source)
RANDOM_NEGATIVES = 11       # plus random documents of the same source: pools of 31 (lists of up to 32)
HELDOUT = {"dev": 50, "test": 100}
#: Debian bookworm's English package descriptions (main), as the archive's signed InRelease lists them.
DESCRIPTIONS = {
    "url": "http://deb.debian.org/debian/dists/bookworm/main/i18n/Translation-en.xz",
    "sha256": "a3d4a0bfd8e9242810b0885eda7c1a6e05dac15b333ddbaab03ba56f2dfa4bf0",
    "license": "per package, DFSG-free (Debian main: each description is part of its package's debian/control)",
}
#: Packages whose descriptions are never trained on: the held-out sources' own packages.
DESCRIPTIONS_EXCLUDED = re.compile(r"^(manpages(-.*)?|python3(\.\d+)?-doc|python3(\.\d+)?)$")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def words(text: str, n: int) -> str:
    parts = text.split()
    return " ".join(parts[:n])


# ---------------------------------------------------------------- packages


def fetch(out: Path) -> dict[str, dict]:
    debs, unpack = out / "debs", out / "unpack"
    debs.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, (version, license_, role) in sorted(PACKAGES.items()):
        found = [p for p in debs.glob(f"{name}_*.deb")]
        if not found:
            subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=debs, check=True,
                           stdout=subprocess.DEVNULL)
            found = list(debs.glob(f"{name}_*.deb"))
        (deb,) = found
        target = unpack / deb.stem
        if not target.is_dir():
            target.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
        info[name] = {"version": version, "license": license_, "role": role, "deb": deb.name,
                      "sha256": sha256(deb), "root": target}
    return info


# ---------------------------------------------------------------- dictionary sources

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(s: str) -> int:
    v = 0
    for c in s:
        v = v * 64 + B64.index(c)
    return v


def dictd_entries(root: Path, name: str) -> list[tuple[str, str]]:
    """(headword, raw entry) of a dictd database, in index order, one per distinct entry."""
    base = root / "usr/share/dictd" / name
    data = gzip.open(f"{base}.dict.dz").read()
    seen, out = set(), []
    for line in open(f"{base}.index", encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        off, ln = _b64(parts[1]), _b64(parts[2])
        if (off, ln) in seen:
            continue
        seen.add((off, ln))
        out.append((parts[0], data[off:off + ln].decode("utf-8", "replace")))
    return out


def wordnet_docs(root: Path) -> list[tuple[list[str], str, str]]:
    """(lemmas, pos, gloss) of every WordNet synset."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(root / "usr/share/wordnet" / f"data.{pos}", encoding="utf-8", errors="replace"):
            if line.startswith("  ") or " | " not in line:
                continue
            head, gloss = line.split(" | ", 1)
            f = head.split()
            n = int(f[3], 16)
            lemmas = [re.sub(r"\(.*\)$", "", f[4 + 2 * i]).replace("_", " ") for i in range(n)]
            out.append((lemmas, pos, clean(gloss)))
    return out


def dict_term_entries(entries: list[tuple[str, str]], kind: str) -> list[tuple[str, str]]:
    """(term, definition text) for foldoc/jargon/gcide entries."""
    out = []
    for head, raw in entries:
        lines = raw.split("\n")
        title = lines[0].strip()
        body = "\n".join(lines[1:])
        if kind == "gcide":
            if "[WordNet 1.5]" in raw or "[PJC]" not in raw and "[Webster 1913" not in raw:
                continue
            body = re.sub(r"\\[^\\]*\\", "", raw.split("\n", 1)[1] if "\n" in raw else raw)
            body = re.sub(r"\[(Webster 1913 Suppl\.|Webster 1913|PJC|1913 Webster)\]", "", body)
            title = re.sub(r"\\.*$", "", lines[0]).strip()
        body = re.sub(r"\{\(?https?://[^}]*\}", "", body)
        body = re.sub(r"\(\d{4}-\d{2}-\d{2}\)", "", body)
        body = body.replace("{", "").replace("}", "")
        body = re.sub(r"<([a-z ,]+)>", r"(\1)", body)
        text = clean(body)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9 .'+#-]{1,40}", title) or len(text.split()) < 6:
            continue
        out.append((title, words(text, 120)))
    return out


TEMPLATES = ["what is {w}?", "what does {w} mean?", "define {w}", "{w}", "{w} meaning",
             "definition of {w}", "what is meant by {w}?", "explain {w}"]
COMPUTING = ["what is {w} in computing?", "{w}", "what does {w} mean?", "define {w}", "explain {w}",
             "{w} definition", "what is {w}?"]


# ---------------------------------------------------------------- package descriptions


def fetch_descriptions(out: Path) -> Path:
    """Download (once) and verify Translation-en.xz into ``<out>/debs``; a changed archive is an error."""
    import urllib.request

    path = out / "debs" / "Translation-en.xz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        urllib.request.urlretrieve(DESCRIPTIONS["url"], path)
    if sha256(path) != DESCRIPTIONS["sha256"]:
        sys.exit(f"{path}: sha256 {sha256(path)} is not the pinned {DESCRIPTIONS['sha256']} (the archive "
                 "changed: update DESCRIPTIONS from bookworm's InRelease, and say so in the data manifest)")
    return path


def description_docs(path: Path) -> list[tuple[str, str, str]]:
    """(package, one-line description, long description) of every package in Translation-en, one per
    distinct first paragraph (libfoo1, libfoo-dev and foo often share it: the first name in sorted order
    stands for all), skipping the held-out sources' packages and descriptions too short to rank."""
    import lzma

    seen, out = set(), []
    for stanza in sorted(lzma.open(path, "rt", encoding="utf-8").read().split("\n\n")):
        name = re.search(r"^Package: (\S+)", stanza, re.M)
        desc = re.search(r"^Description-en: (.*)\n((?: .*\n?)*)", stanza, re.M)
        if not name or not desc or DESCRIPTIONS_EXCLUDED.match(name.group(1)):
            continue
        paragraphs = [clean(" ".join(x.strip() for x in para.split("\n")))
                      for para in re.split(r"\n \.\n", desc.group(2))]
        paragraphs = [x for x in paragraphs if x and x != "."]
        if not paragraphs or paragraphs[0].lower() in seen:
            continue
        seen.add(paragraphs[0].lower())
        long_text = words(" ".join(paragraphs), 120)
        short = clean(desc.group(1))
        if len(short.split()) >= 3 and len(long_text.split()) >= 20:
            out.append((name.group(1), short, long_text))
    return out


def description_groups(docs: list[tuple[str, str, str]], count: int, rng: np.random.Generator) -> list[dict]:
    """Query: a package's one-line description; positive: its long description; every package with the
    same one-line description is a positive too (never a negative)."""
    doc_ids = [f"packages:{i}" for i in range(len(docs))]
    texts = [f"{name}: {text}" for name, _, text in docs]
    owner: dict[str, list[str]] = {}
    for i, (_, short, _) in enumerate(docs):
        owner.setdefault(short.lower(), []).append(doc_ids[i])
    order = rng.permutation(len(docs))[:count]
    queries = [docs[int(i)][1] for i in order]
    negs = mine(queries, [owner[q.lower()] for q in queries], doc_ids, texts, rng)
    return [{"query_id": f"packages:{docs[int(i)][0]}", "query": q, "positive": texts[int(i)],
             "negatives": [texts[int(d.split(':')[1])] for d in n], "source": "packages"}
            for i, q, n in zip(order, queries, negs)]


# ---------------------------------------------------------------- held-out sources


def groff_text(lines: list[str]) -> str:
    out = []
    for line in lines:
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            m = re.match(r"\.(B|I|BR|IR|BI|RB|RI|IB|SM|SB)\s+(.*)", line)
            if not m:
                continue
            line = m.group(2).replace('"', "")
            line = re.sub(r"(\S)\s+(\(\d\w*\))", r"\1\2", line) if m.group(1) in ("BR", "IR") else line
        out.append(line)
    text = " ".join(out)
    text = re.sub(r"\\f[BIRP]|\\f\(..|\\f\[[^]]*\]", "", text)
    text = text.replace("\\-", "-").replace("\\(aq", "'").replace("\\(dq", '"').replace("\\e", "\\")
    text = re.sub(r"\\\[(em|en)\]", " - ", text)
    text = re.sub(r"\\\[[a-z]{2}\]|\\\(..|\\[&|^~0 ]", "", text)
    return clean(text)


def manpage_docs(roots: list[Path]) -> list[dict]:
    docs = []
    for root in roots:
        for path in sorted((root / "usr/share/man").glob("man*/*.gz")):
            src = gzip.open(path).read().decode("utf-8", "replace").split("\n")
            if any(l.startswith(".so ") for l in src[:5]):
                continue
            sections: dict[str, list[str]] = {}
            cur = None
            for line in src:
                m = re.match(r"\.SH\s+\"?([^\"]*)\"?", line)
                if m:
                    cur = m.group(1).strip().upper()
                    sections.setdefault(cur, [])
                elif cur:
                    sections[cur].append(line)
            name_line = groff_text(sections.get("NAME", []))
            if " - " not in name_line or "DESCRIPTION" not in sections:
                continue
            names, desc = name_line.split(" - ", 1)
            text = groff_text(sections["DESCRIPTION"])
            if len(text.split()) < 20 or len(desc.split()) < 2:
                continue
            page = path.name[:-3]
            docs.append({"_id": f"man:{page}", "title": f"{names.strip()} ({page.rsplit('.', 1)[-1]})",
                         "text": words(text, 250), "query": clean(desc)})
    return docs


class _Sections(HTMLParser):
    """Flat (heading level, heading text, body text) sections of a Sphinx page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[list] = []
        self.heading: int | None = None
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2", "h3"):
            self.heading = int(tag[1])
            self.sections.append([self.heading, "", ""])
        elif tag in ("script", "style", "nav") or (tag == "a" and ("class", "headerlink") in attrs) \
                or (tag == "div" and any(k == "class" and v and ("sphinxsidebar" in v or "related" in v)
                                         for k, v in attrs)):
            self.skip += 1 if tag in ("script", "style", "nav", "a") else 0
            if tag == "div":
                self.sections.append([9, "", ""])   # sidebar: dropped

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3"):
            self.heading = None
        elif tag in ("script", "style", "nav", "a") and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if self.skip or not self.sections:
            return
        self.sections[-1][1 if self.heading else 2] += data


def pydoc_docs(root: Path) -> list[dict]:
    base = root / "usr/share/doc/python3.11/html"
    docs = []
    for path in sorted(base.glob("**/*.html")):
        rel = path.relative_to(base).as_posix()
        if rel.startswith(("genindex", "py-modindex", "search", "whatsnew/changelog", "_")) or "/" not in rel:
            continue
        p = _Sections()
        p.feed(path.read_text(encoding="utf-8", errors="replace"))
        page = None
        for i, (level, head, body) in enumerate(p.sections):
            head, body = clean(head).rstrip("¶").strip(), clean(body)
            if level == 9:
                continue
            if level == 1:
                page = re.split(r" [—-] ", head)[0].strip()
            if len(body.split()) < 25 or not head:
                continue
            query = head if level == 1 or page is None else f"{page}: {head}"
            docs.append({"_id": f"py:{rel}#{i}", "title": "", "text": words(body, 250), "query": query})
    return docs


def heldout_beir(docs: list[dict], out: Path, rng: np.random.Generator, distinct) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    with open(out / "corpus.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"_id": d["_id"], "title": d["title"], "text": d["text"]}) + "\n")
    by_query: dict[str, list[str]] = {}
    for d in docs:
        by_query.setdefault(d["query"].lower(), []).append(d["_id"])
    candidates = sorted(q for q, ids in by_query.items() if len(ids) == 1 and distinct(q))
    order = rng.permutation(len(candidates))
    chosen = [candidates[i] for i in order[: sum(HELDOUT.values())]]
    text_of = {d["query"].lower(): d["query"] for d in docs}
    queries, start = [], 0
    for split, n in HELDOUT.items():
        with open(out / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for k, q in enumerate(chosen[start:start + n]):
                qid = f"{split}{k}"
                queries.append({"_id": qid, "text": text_of[q]})
                for d in by_query[q]:
                    f.write(f"{qid}\t{d}\t1\n")
        start += n
    with open(out / "queries.jsonl", "w") as f:
        for q in queries:
            f.write(json.dumps(q) + "\n")
    return {"documents": len(docs), **HELDOUT}


# ---------------------------------------------------------------- groups


def mine(queries: list[str], positives: list[list[str]], doc_ids: list[str], texts: list[str],
         rng: np.random.Generator) -> list[list[str]]:
    """BM25_NEGATIVES hard negatives (never a positive) + RANDOM_NEGATIVES random ones, as doc ids."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from lbnl.ir.bm25 import BM25Index

    index = BM25Index.build(doc_ids, texts)
    hits = index.search(queries, BM25_NEGATIVES + 8)
    out = []
    for row, pos in zip(hits, positives):
        banned = set(pos)
        hard = [d for d, _ in row if d not in banned][:BM25_NEGATIVES]
        banned |= set(hard)
        rand = []
        while len(rand) < RANDOM_NEGATIVES:
            d = doc_ids[int(rng.integers(len(doc_ids)))]
            if d not in banned:
                rand.append(d)
                banned.add(d)
        out.append(hard + rand)
    return out


def dictionary_groups(name: str, entries: list[tuple[list[str], str]], count: int,
                      templates: list[str], rng: np.random.Generator) -> list[dict]:
    """entries: (headwords, document text). Query: a template on one headword; positive: its entry."""
    doc_ids = [f"{name}:{i}" for i in range(len(entries))]
    texts = [t for _, t in entries]
    order = rng.permutation(len(entries))[:count]
    queries, heads_used, positives = [], [], []
    owner: dict[str, set[str]] = {}
    for i, (heads, _) in enumerate(entries):
        for h in heads:
            owner.setdefault(h.lower(), set()).add(doc_ids[i])
    for i in order:
        heads = entries[i][0]
        w = heads[int(rng.integers(len(heads)))]
        queries.append(templates[int(rng.integers(len(templates)))].format(w=w))
        heads_used.append(w)                           # negatives are mined with the headword alone
        positives.append(sorted(owner[w.lower()]))    # entries of the same headword are never negatives
    negs = mine(heads_used, positives, doc_ids, texts, rng)
    return [{"query_id": f"{name}:{int(i)}", "query": q, "positive": texts[int(i)],
             "negatives": [texts[int(d.split(':')[1])] for d in n], "source": name}
            for i, q, n in zip(order, queries, negs)]


def scifact_groups(root: Path, rng: np.random.Generator) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from lbnl.ir.beir import document_text, load_beir

    held = set((Path(__file__).resolve().parents[1] / "docs/training/lbnl-small-validation_queries.txt")
               .read_text().split())
    data = load_beir(root, "train")
    docs = {i: document_text(d) for i, d in data.corpus.items()}
    doc_ids = sorted(docs)
    pairs = []
    for q in sorted(data.qrels, key=lambda x: (len(x), x)):
        if q in held or q not in data.queries:
            continue
        pos = sorted(d for d, s in data.qrels[q].items() if s > 0 and d in docs)
        pairs += [(q, p, pos) for p in pos]
    groups = []
    for rep in range(SCIFACT_REPEAT):
        negs = mine([data.queries[q] for q, _, _ in pairs], [pos for _, _, pos in pairs], doc_ids,
                    [docs[i] for i in doc_ids], rng)
        groups += [{"query_id": f"scifact:{q}:{p}:{rep}", "query": data.queries[q], "positive": docs[p],
                    "negatives": [docs[d] for d in n], "source": "scifact"} for (q, p, _), n in zip(pairs, negs)]
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scifact", required=True, help="BEIR SciFact directory (only qrels/train.tsv is read)")
    ap.add_argument("--out", default="data/v2")
    ap.add_argument("--packages", type=int, default=0,
                    help="groups from Debian's package descriptions to append (v2: 0; v3: 2000)")
    args = ap.parse_args()
    out = Path(args.out)
    pk = fetch(out)
    rng = lambda *k: np.random.default_rng([SEED, *k])  # noqa: E731

    # held-out sources first (never trained on)
    man = manpage_docs([pk["manpages"]["root"], pk["manpages-dev"]["root"]])
    py = pydoc_docs(pk["python3.11-doc"]["root"])
    generic = {"example", "examples", "notes", "introduction", "overview", "see also", "functions", "classes",
               "constants", "usage", "exceptions", "methods", "attributes"}
    heldout = {
        "manpages": heldout_beir(man, out / "heldout/manpages", rng(1), lambda q: len(q.split()) >= 3),
        "pydocs": heldout_beir(py, out / "heldout/pydocs", rng(2),
                               lambda q: q.split(": ")[-1].lower() not in generic and len(q.split()) >= 3),
    }

    wn = [(lemmas, f"{', '.join(lemmas)}: {gloss}") for lemmas, _, gloss in wordnet_docs(pk["wordnet-base"]["root"])]
    gc = [([t], f"{t}: {d}") for t, d in dict_term_entries(dictd_entries(pk["dict-gcide"]["root"], "gcide"), "gcide")]
    fo = [([t], f"{t}: {d}") for t, d in dict_term_entries(dictd_entries(pk["dict-foldoc"]["root"], "foldoc"), "foldoc")]
    ja = [([t], f"{t}: {d}") for t, d in dict_term_entries(dictd_entries(pk["dict-jargon"]["root"], "jargon"), "jargon")]
    groups = (dictionary_groups("wordnet", wn, COUNTS["wordnet"], TEMPLATES, rng(3))
              + dictionary_groups("gcide", gc, COUNTS["gcide"], TEMPLATES, rng(4))
              + dictionary_groups("foldoc", fo, COUNTS["foldoc"], COMPUTING, rng(5))
              + dictionary_groups("jargon", ja, COUNTS["jargon"], COMPUTING, rng(6))
              + scifact_groups(Path(args.scifact), rng(7)))
    described = []
    if args.packages:
        described = description_docs(fetch_descriptions(out))
        groups += description_groups(described, args.packages, rng(8))
    with open(out / "train.jsonl", "w") as f:
        for g in groups:
            f.write(json.dumps(g, ensure_ascii=False) + "\n")

    counts: dict[str, int] = {}
    for g in groups:
        counts[g["source"]] = counts.get(g["source"], 0) + 1
    files = sorted(p for p in [out / "train.jsonl", *(out / "heldout").rglob("*")] if p.is_file())
    command = f"python scripts/build_training_data.py --scifact <BEIR scifact dir> --out {args.out}"
    manifest = {
        "command": command + (f" --packages {args.packages}" if args.packages else ""),
        "seed": SEED,
        "packages": {n: {k: v for k, v in i.items() if k != "root"} for n, i in pk.items()},
        "scifact": {"path": str(args.scifact), "split": "train", "license": "CC BY-NC 2.0 (BEIR SciFact)",
                    "excluded_queries": "docs/training/lbnl-small-validation_queries.txt (v1's 60 held-out)"},
        "train_groups": counts,
        "negatives": {"bm25": BM25_NEGATIVES, "random": RANDOM_NEGATIVES, "scifact_repeat": SCIFACT_REPEAT},
        **({"descriptions": {**DESCRIPTIONS, "file": "debs/Translation-en.xz", "packages": len(described),
                             "excluded": DESCRIPTIONS_EXCLUDED.pattern}} if args.packages else {}),
        "heldout": heldout,
        "sources": {"wordnet": len(wn), "gcide": len(gc), "foldoc": len(fo), "jargon": len(ja),
                    "manpages": len(man), "pydocs": len(py), **({"packages": len(described)} if described else {})},
        "outputs": {p.relative_to(out).as_posix(): sha256(p) for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({k: manifest[k] for k in ("train_groups", "heldout", "sources")}, indent=1))


if __name__ == "__main__":
    main()
