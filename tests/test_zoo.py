"""The offline zoo: data loading, splits, local files, tiny models, teacher caching, offline hub."""

import json
import time

import pytest
import torch

from bench.zoo import models as zoo_models
from bench.zoo.data import ZooError, load_dataset, split_dataset
from bench.zoo.models import file_hashes, load_model, model_notes
from compressors.base import CAUSAL_LM, CLASSIFICATION


@pytest.fixture(scope="module")
def bbc():
    return load_dataset("bbc-news")


def test_bbc_news_is_deduplicated_with_five_topics(bbc):
    assert len(bbc) == 2127 and len(set(bbc.texts)) == 2127
    assert bbc.label_names == ("business", "entertainment", "politics", "sports", "tech")


def test_split_is_stratified_disjoint_and_deterministic(bbc):
    train, test = split_dataset(bbc, 0.3, seed=0)
    assert len(train) + len(test) == len(bbc) and not set(train.texts) & set(test.texts)
    for label in range(5):
        share = test.labels.count(label) / bbc.labels.count(label)
        assert share == pytest.approx(0.3, abs=0.01)
    assert split_dataset(bbc, 0.3, seed=0)[1].texts == test.texts
    assert split_dataset(bbc, 0.3, seed=1)[1].texts != test.texts


def test_local_files(tmp_path):
    (tmp_path / "lm.txt").write_text("first paragraph\n\nsecond one\n\n\nthird")
    assert load_dataset(str(tmp_path / "lm.txt")).texts == ("first paragraph", "second one", "third")
    (tmp_path / "c.csv").write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n")
    ds = load_dataset(str(tmp_path / "c.csv"))
    assert ds.label_names == ("neg", "pos") and ds.labels == (1, 0, 1)
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t, "label": i}) for i, t in enumerate("abc")))
    assert load_dataset(str(tmp_path / "c.jsonl")).labels == (0, 1, 2)


def test_bad_data_says_what_is_wrong(tmp_path):
    (tmp_path / "bad.csv").write_text("sentence,score\nhello,1\n")
    with pytest.raises(ZooError, match=r"needs columns 'text' and 'label'; found \['sentence', 'score'\]"):
        load_dataset(str(tmp_path / "bad.csv"))
    with pytest.raises(ZooError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.jsonl"))
    with pytest.raises(ZooError, match="did you mean bbc-news"):
        load_dataset("bbc-newz")


def test_hub_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.time()
    with pytest.raises(ZooError, match="hf:gpt2 needs the Hugging Face hub.*offline choices"):
        load_model("hf:gpt2", CAUSAL_LM)
    with pytest.raises(ZooError, match="hub"):
        load_dataset("hf:wikitext")
    assert time.time() - started < 5


def test_unknown_model_suggests_close_names():
    with pytest.raises(ZooError, match="did you mean minilm-l6"):
        load_model("minilm-l5", CLASSIFICATION)


def test_tiny_models_are_deterministic_and_shaped():
    ids = torch.randint(0, 1000, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for name in ("tiny-gpt2", "tiny-llama"):
        a, b = load_model(name, CAUSAL_LM), load_model(name, CAUSAL_LM)
        logits = a.forward(batch)
        assert logits.shape == (2, 12, len(a.tokenizer)) and torch.equal(logits, b.forward(batch))
        assert model_notes(name)


def test_local_directory_loads_and_one_without_weights_errors(tmp_path):
    model = load_model("tiny-llama", CAUSAL_LM)
    model.module.save_pretrained(tmp_path / "mine")
    model.tokenizer.save_pretrained(tmp_path / "mine")
    ids = torch.randint(0, 1000, (1, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    again = load_model(str(tmp_path / "mine"), CAUSAL_LM)
    assert torch.allclose(again.forward(batch), model.forward(batch), atol=1e-5)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ZooError, match="has no weights"):
        load_model(str(tmp_path / "empty"), CAUSAL_LM)


def test_teacher_is_trained_once_then_cached(tmp_path, monkeypatch, bbc):
    monkeypatch.setenv("COMPBENCH_CACHE", str(tmp_path))
    train, _ = split_dataset(bbc, 0.3, seed=0)
    from bench.tasks import _head

    small = _head(train, 40)
    first = load_model("tiny-bert", CLASSIFICATION, train_data=small, max_length=16, progress=False)
    assert len(list((tmp_path / "teachers").iterdir())) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher should have been reused")

    monkeypatch.setattr(zoo_models, "fine_tune", no_training)
    second = load_model("tiny-bert", CLASSIFICATION, train_data=small, max_length=16, progress=False)
    ids = torch.randint(0, 1000, (2, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert torch.allclose(first.forward(batch), second.forward(batch))
    with pytest.raises(AssertionError, match="reused"):  # other data means another teacher
        load_model("tiny-bert", CLASSIFICATION, train_data=_head(train, 41), max_length=16, progress=False)


def test_zoo_files_are_pinned_by_hash():
    hashes = file_hashes("minilm-l6")
    assert all(len(h) == 64 for h in hashes.values())
    assert "Q4_1" in model_notes("smollm2-135m")[0]


@pytest.mark.slow
def test_minilm_loads_verified():
    from bench.zoo.models import minilm_dir

    assert (minilm_dir() / "model.safetensors").exists()
