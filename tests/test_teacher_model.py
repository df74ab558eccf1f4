"""The offline teacher (tiny-t5): vocabulary coverage, loading by path, determinism, path resolution."""
import logging
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from bidir.envs import INSTRUCTION_ACTIONS, babyai_env_ids, make_text_env
from bidir.prompts import build_prompt
from bidir.models import OFFLINE_HINT, build_model, resolve_model_path
from bidir.teacher_cli import main


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="module")
def tokenizer(tiny_t5):
    return AutoTokenizer.from_pretrained(tiny_t5)


def unknown_words(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.convert_ids_to_tokens(i) for i in ids if i == tokenizer.unk_token_id]


def test_special_tokens_are_t5_like(tokenizer):
    # pad doubles as T5's decoder start token; Lamorel's seq2seq decoder input is [pad] + candidate.
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer("Go to the red ball")["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer("go to", add_special_tokens=False)["input_ids"] == tokenizer("GO  TO")["input_ids"][:-1]


def test_every_babyai_mission_and_description_is_in_vocabulary(tokenizer):
    """5 seeds of every registered BabyAI level, plus 10 random steps of text observations each."""
    rng = np.random.default_rng(0)
    ids = babyai_env_ids()
    assert len(ids) > 50
    unknown = {}
    for env_id in ids:
        env = make_text_env(env_id, seed=0)
        for seed in range(5):
            _, info = env.reset(seed=seed)
            texts = [info["mission"], *info["descriptions"]]
            for _ in range(10):
                _, _, term, trunc, info = env.step(int(rng.integers(0, 6)))
                texts += info["descriptions"]
                if term or trunc:
                    break
            for text in texts:
                words = unknown_words(tokenizer, text)
                if words:
                    unknown[env_id] = (text, words)
        env.close()
    assert unknown == {}


def test_instructions_prompt_words_and_numbers_are_in_vocabulary(tokenizer):
    texts = list(INSTRUCTION_ACTIONS) + [
        "Possible actions of the agent: turn left, turn right, go forward, pick up, drop, toggle, done",
        "Goal of the agent: put the blue key next to a grey box after you open the door on your left",
        "Past observations: You see a locked purple door 3 steps left and 12 steps forward. "
        "Current observation: You carry a yellow ball. Next action:",
        'Student critique: the instruction "go forward" was helpful (followed); good. '
        "The teacher's instruction was unhelpful, not followed - ignored; bad.",
        " ".join(str(i) for i in range(200)),
        build_prompt("go to the red ball", [["You see a wall 2 steps forward"], ["You see a red ball 1 step left"]],
                     ["turn left"]),
    ]
    assert {t: unknown_words(tokenizer, t) for t in texts} == {t: [] for t in texts}


def test_tiny_t5_loads_by_path_and_is_small_and_deterministic(tiny_t5, tmp_path):
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5)
    n_params = sum(p.numel() for p in model.parameters())
    assert 150_000 <= n_params <= 400_000
    assert model.config.decoder_start_token_id == 0
    again = AutoModelForSeq2SeqLM.from_pretrained(build_model(tmp_path / "again", seed=0))
    other = AutoModelForSeq2SeqLM.from_pretrained(build_model(tmp_path / "other", seed=1))
    for (name, a), b, c in zip(model.state_dict().items(), again.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, c) for a, c in zip(model.state_dict().values(), other.state_dict().values()))


def test_cli_build(tmp_path, capsys):
    main(["build", "--output", str(tmp_path / "t5"), "--seed", "3"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "t5")
    assert (tmp_path / "t5" / "config.json").is_file() and (tmp_path / "t5" / "tokenizer.json").is_file()


def test_resolve_offline_teacher_builds_once_then_reuses(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("BIDIR_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="bidir"):
        path = resolve_model_path("tiny-t5")
    assert path == str(tmp_path / "tiny-t5") and "built tiny-t5" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bidir"):
        assert resolve_model_path("tiny-t5") == path
    assert "built" not in caplog.text
    assert resolve_model_path("tiny-t5", cache_dir=tmp_path / "elsewhere") == str(tmp_path / "elsewhere" / "tiny-t5")


def test_resolve_local_directories(tiny_t5, tmp_path):
    assert resolve_model_path(str(tiny_t5)) == str(tiny_t5)
    (tmp_path / "no_tokenizer").mkdir()
    (tmp_path / "no_tokenizer" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no_tokenizer.*missing tokenizer files"):
        resolve_model_path(str(tmp_path / "no_tokenizer"))
    with pytest.raises(ValueError, match="empty.*missing config.json"):
        (tmp_path / "empty").mkdir()
        resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        resolve_model_path(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model_path("./models/absent-t5")


def test_unreachable_hub_fails_fast_naming_the_offline_choice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty local HF cache
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        resolve_model_path("google/flan-t5-small")
    assert time.monotonic() - start < 15
    assert OFFLINE_HINT in str(err.value) and "google/flan-t5-small" in str(err.value)
