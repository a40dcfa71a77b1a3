"""Every dataset, not only BBC News, loses its exact duplicates before it is split; a separate held-out
file's overlap with the training data is counted; the manifest hashes that file, records both, and the
report says so (issue 16, defect 10)."""

import json

from bench.zoo.data import deduplicated, load_dataset, make_dataset, pair_datasets, split_dataset, train_test_overlap


def test_every_local_dataset_drops_exact_duplicates_and_counts_them(tmp_path):
    (tmp_path / "lm.txt").write_text("one\n\ntwo\n\none\n\nthree\n\ntwo\n")
    lm = load_dataset(str(tmp_path / "lm.txt"))
    assert lm.texts == ("one", "two", "three") and lm.duplicates_removed == 2
    # the same text under another label is a duplicate too: it would be trained on and scored alike
    (tmp_path / "c.csv").write_text("text,label\ngood,pos\nbad,neg\ngood,pos\ngood,neg\nfine,pos\n")
    ds = load_dataset(str(tmp_path / "c.csv"))
    assert ds.texts == ("good", "bad", "fine") and ds.labels == (1, 0, 1) and ds.duplicates_removed == 2
    rows = [{"text": t, "label": 0} for t in ("a", "b", "a")]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_dataset(str(tmp_path / "c.jsonl")).duplicates_removed == 1
    assert ds.source_hash == make_dataset("x", ["good", "bad", "fine"], [1, 0, 1], ["neg", "pos"]).source_hash
    # no duplicate can be on both sides of a split, so none of the test split is in train
    train, test = split_dataset(load_dataset(str(tmp_path / "lm.txt")), 0.34, seed=0)
    assert train_test_overlap(train, test) == 0


def test_bbc_news_records_its_98_duplicates():
    bbc = load_dataset("bbc-news")
    assert bbc.duplicates_removed == 98 and len(bbc) == 2127


def test_a_separate_test_file_counts_its_overlap_with_train(tmp_path):
    train = make_dataset("train.csv", ["a", "b", "c", "d"], [0, 1, 0, 1], ["neg", "pos"])
    test = deduplicated("test.csv", ["b", "e", "d", "e"], [1, 0, 1, 0], ["neg", "pos"])
    _, held_out = pair_datasets(train, test)
    assert train_test_overlap(train, held_out) == 2 and held_out.duplicates_removed == 1


def test_the_manifest_hashes_a_test_dataset_and_records_what_the_data_held(tmp_path):
    from bench.config.matrix import load_matrix
    from bench.report.markdown import provenance as report_lines
    from bench.run.provenance import manifest

    train_rows = [f"{i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (tmp_path / "train.csv").write_text("\n".join(["text,label", *train_rows, "0,neg", "1,pos"]) + "\n")
    (tmp_path / "test.csv").write_text("text,label\n3,pos\n100,neg\n101,pos\n100,neg\n")
    (tmp_path / "m.toml").write_text(
        f'[[task]]\nname = "mine"\ntype = "classification"\nmodel = "tiny-bert"\n'
        f'dataset = "{tmp_path / "train.csv"}"\ntest_dataset = "{tmp_path / "test.csv"}"\n\n'
        '[[compressor]]\nname = "identity"\n')
    recorded = manifest(load_matrix(str(tmp_path / "m.toml")), "r")
    test_file = str(tmp_path / "test.csv")
    assert recorded["data_hashes"][test_file] == load_dataset(test_file).source_hash
    data = recorded["data"]["mine"]
    assert data["duplicates_removed"] == {str(tmp_path / "train.csv"): 2, test_file: 1}
    assert data["train_examples"] == 40 and data["test_examples"] == 3 and data["train_test_overlap"] == 1
    line = next(line for line in report_lines(recorded) if line.startswith("Data of mine:"))
    assert "2 exact duplicate(s) removed" in line and "1 of the 3 test examples also in the 40 training" in line
