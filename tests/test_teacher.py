"""The teacher fine-tune: a validation carve from train, keep-best, early stopping, the budget, the recipe, the note."""

import pytest
import torch

from bench.zoo import teacher
from bench.zoo.data import load_dataset, make_dataset, split_dataset, validation_split
from bench.zoo.teacher import FineTuneRecipe, fine_tune, teacher_recipe, training_note
from bench.zoo.tokenizers import load_tokenizer

MAX_LENGTH = 16


@pytest.fixture(scope="module")
def train():
    bbc = load_dataset("bbc-news")
    split = split_dataset(bbc, 0.3, seed=0)[0]
    return make_dataset("bbc-news:train", split.texts[::15], split.labels[::15], split.label_names)  # 100 articles


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-bert")  # the MiniLM tokenizer


def _module(tokenizer, seed=0):
    """A BERT small enough to train a few epochs in seconds (its embedding is most of it)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, num_labels=5))


class SpyTokenizer:
    """Records which texts were encoded while the module trained and which while it was evaluated."""

    def __init__(self, tokenizer, module):
        self.tokenizer, self.module = tokenizer, module
        self.seen = {True: set(), False: set()}

    def __call__(self, texts, **kwargs):
        self.seen[self.module.training].update(texts)
        return self.tokenizer(texts, **kwargs)


def _accuracy(module, tokenizer, ds):
    enc = tokenizer(list(ds.texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        logits = module(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    return (logits.argmax(-1) == torch.tensor(ds.labels)).float().mean().item()


def test_training_sees_the_fit_part_only_and_keeps_the_best_validation(train, tokenizer):
    module = _module(tokenizer)
    spy = SpyTokenizer(tokenizer, module)
    recipe = FineTuneRecipe(epochs=4, lr=3e-3, patience=None)
    trained, report = fine_tune(module, spy, train, MAX_LENGTH, seed=0, recipe=recipe, progress=False)
    fit, validation = validation_split(train, 0.1, seed=0)
    assert spy.seen[True] == set(fit.texts) and spy.seen[False] == set(validation.texts)  # never mixed
    assert report["fit_examples"] == len(fit) == 90 and report["validation_examples"] == len(validation) == 10
    assert report["steps"] == 4 * 6 and report["stopped_by"] == "epochs" and not trained.training
    steps = [step for step, _, _ in report["curve"]]
    assert steps == [6, 12, 18, 24]  # one validation per epoch
    accuracies = [accuracy for _, accuracy, _ in report["curve"]]
    assert report["best_accuracy"] == max(accuracies)
    assert report["best_step"] == steps[accuracies.index(max(accuracies))]  # the first best: ties keep the earlier
    # keep-best: the returned weights are the best validation's, not the last step's
    assert _accuracy(trained, tokenizer, validation) == pytest.approx(report["best_accuracy"], abs=1e-6)
    assert all(loss > 0 for _, _, loss in report["curve"])


def test_early_stopping_and_the_time_budget_stop_training(train, tokenizer):
    # A learning rate too small to change any prediction: the first validation stays the best and
    # two more without improvement stop it, long before the 20 epochs planned.
    _, report = fine_tune(_module(tokenizer), tokenizer, train, MAX_LENGTH, seed=0,
                          recipe=FineTuneRecipe(epochs=20, lr=1e-8, patience=2), progress=False)
    assert report["stopped_by"] == "early stopping" and report["steps"] == 3 * 6
    assert [step for step, _, _ in report["curve"]] == [6, 12, 18] and report["best_step"] == 6
    _, report = fine_tune(_module(tokenizer), tokenizer, train, MAX_LENGTH, seed=0,
                          recipe=FineTuneRecipe(epochs=20, max_seconds=1e-3), progress=False)
    assert report["stopped_by"] == "max_seconds" and report["steps"] == 1
    assert [step for step, _, _ in report["curve"]] == [1]  # the last weights are validated too



def test_the_cost_is_stated_before_training_starts(train, tokenizer, capsys):
    seen_when_training = []

    class Spy(SpyTokenizer):
        def __call__(self, texts, **kwargs):
            seen_when_training.append(capsys.readouterr().err)  # what was printed before the first batch
            return self.tokenizer(texts, **kwargs)

    module = _module(tokenizer)
    fine_tune(module, Spy(tokenizer, module), train, MAX_LENGTH, seed=0,
              recipe=FineTuneRecipe(epochs=3, lr=1e-8, patience=2), progress=True)
    assert ("90 examples, at most 3 epoch(s) x 6 steps of 16 (18 steps), stopping after 2 epoch(s) without a "
            "better validation accuracy") in seen_when_training[0]

def test_too_few_examples_train_on_all_without_validation(train, tokenizer):
    few = make_dataset("few", train.texts[:6], train.labels[:6], train.label_names)
    module = _module(tokenizer)
    spy = SpyTokenizer(tokenizer, module)
    _, report = fine_tune(module, spy, few, MAX_LENGTH, seed=0, recipe=FineTuneRecipe(epochs=1), progress=False)
    assert report["validation_examples"] == 0 and report["curve"] == [] and spy.seen[True] == set(few.texts)
    info = {"train_examples": 6, "max_length": MAX_LENGTH, "seed": 0, "device": "cpu", "train_seconds": 0.1,
            "recipe": {**FineTuneRecipe(epochs=1).__dict__}, "training": report}
    assert "6 training examples, no validation split (too few examples); AdamW" in training_note(info)
    assert "early stopping" not in training_note(info)  # one epoch: patience cannot act


def test_the_recipe_scales_with_the_data():
    assert teacher_recipe(1488) == FineTuneRecipe()  # the whole BBC train split: up to 6 epochs, patience 1
    assert FineTuneRecipe().epochs == 6 and FineTuneRecipe().patience == 1 and FineTuneRecipe().max_seconds == 7200
    assert teacher_recipe(320).epochs == 1 and teacher_recipe(64).epochs == 1  # quick runs and tests: one epoch
    assert teacher_recipe(800).epochs == 4
    tiny = teacher_recipe(64, pretrained=False)  # random weights: big steps, at least 60 of them, no early stop
    assert tiny.lr == teacher.RANDOM_LR and tiny.epochs == 15 and tiny.patience is None


def test_the_note_states_the_curve_and_why_it_stopped():
    info = {"train_examples": 1488, "max_length": 128, "seed": 0, "device": "cpu", "train_seconds": 1234.5,
            "recipe": {**FineTuneRecipe(patience=2).__dict__},
            "training": {"fit_examples": 1340, "validation_examples": 148, "steps_per_epoch": 84, "steps": 336,
                         "epochs": 4.0, "stopped_by": "early stopping", "best_step": 168, "best_accuracy": 0.9797,
                         "curve": [[84, 0.9595, 0.2], [168, 0.9797, 0.1], [252, 0.973, 0.1], [336, 0.9797, 0.1]]}}
    note = training_note(info)
    assert note.startswith("classifier fine-tuned by compbench on 1340 of the task's 1488 training examples "
                           "(148 more held out for validation, not from the test split); AdamW lr 0.0001, batch 16")
    assert "validation accuracy by epoch 1: 96.0%, 2: 98.0%, 3: 97.3%, 4: 98.0%" in note
    assert "stopped early after 4 epoch(s) (336 steps, 1234.5 s on cpu)" in note
    assert note.endswith("kept the weights of epoch 2 (98.0%)")
    assert "up to 6 epoch(s), early stopping after 2 epoch(s) without a better validation accuracy" in note
    assert "\n" not in note
