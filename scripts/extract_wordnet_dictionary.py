"""Extract WordNet 3.0's glosses and lemmas (data/wordnet/glosses.txt,
data/wordnet/lemmas.txt) from Debian's ``wordnet-base`` package.

The built-in model trains on them besides the example sentences
(data/wordnet/train.txt): they are the same database, under the same
licence (data/wordnet/LICENSE), and they show the model how every word of
the dictionary is spelt. Nothing equal to a validation or test sentence is
kept.

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb /tmp/wn
    python scripts/extract_wordnet_dictionary.py /tmp/wn/usr/share/wordnet
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("noun", "verb", "adj", "adv")


def normal(text: str) -> str:
    return " ".join(text.lower().split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wordnet", type=Path, help="the folder with data.noun, index.noun, ...")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "wordnet")
    args = parser.parse_args()
    held_out = {normal(line) for name in ("valid.txt", "test.txt")
                for line in (args.out / name).read_text().splitlines()}
    glosses, lemmas = {}, {}
    for part in PARTS:
        for line in (args.wordnet / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            for piece in line.split("|", 1)[1].split(";"):
                piece = " ".join(piece.split())
                if piece and not piece.startswith('"'):  # the quoted pieces are the example sentences
                    glosses.setdefault(normal(piece), piece)
        for line in (args.wordnet / f"index.{part}").read_text(encoding="latin-1").splitlines():
            if not line.startswith("  "):
                lemma = line.split(" ", 1)[0].replace("_", " ")
                lemmas.setdefault(normal(lemma), lemma)
    for name, table in (("glosses.txt", glosses), ("lemmas.txt", lemmas)):
        kept = [text for key, text in table.items() if key not in held_out]
        (args.out / name).write_text("\n".join(kept) + "\n")
        print(f"{name}: {len(kept):,} lines ({len(table) - len(kept)} equal to a held-out sentence dropped)")


if __name__ == "__main__":
    main()
