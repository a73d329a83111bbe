"""Calibration: profiles fitted from the attention funnel, saved and loaded as JSON, and the CLI glue."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from helpers.tiny_models import random_prompt, tiny_model

from kvpress_lab.analysis import attention_funnel, synthetic_prompts, synthetic_text
from kvpress_lab.cli.calibrate import add_calibrate_arguments, run_calibrate
from kvpress_lab.calibration import (
    PROFILE_VERSION,
    Profile,
    ProfileError,
    calibrate,
    shipped_profiles,
)
from kvpress_lab.errors import KVPressLabError


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", layers=4)


@pytest.mark.parametrize("statistic", ["entropy", "coverage"])
def test_calibrate_averages_the_funnel_over_prompts_and_normalises(llama, statistic):
    prompts = [random_prompt(1, 40, seed=1)[0], random_prompt(1, 25, seed=2)[0]]
    profile = calibrate(llama, prompts, window=6, statistic=statistic, model_name="tiny-llama")
    reports = [attention_funnel(llama, p[None], window=6) for p in prompts]
    field = "entropy" if statistic == "entropy" else "coverage_fraction"
    means = [(a + b) / 2 for a, b in zip(getattr(reports[0], field), getattr(reports[1], field))]
    assert profile.settings["means"] == pytest.approx(means, rel=1e-5)
    assert profile.weights == pytest.approx([m / sum(means) for m in means], rel=1e-5)
    assert sum(profile.weights) == pytest.approx(1.0)
    assert (profile.model, profile.num_layers, profile.statistic, profile.version) == ("tiny-llama", 4, statistic, PROFILE_VERSION)
    assert profile.settings["window"] == 6 and profile.settings["prompt_lengths"] == [40, 25]


def test_save_load_round_trip(llama, tmp_path):
    profile = calibrate(llama, [random_prompt(1, 30)[0]], window=4)
    path = profile.save(tmp_path / "sub" / "tiny.json")
    assert Profile.load(path) == profile and Profile.load(str(path)) == profile
    data = json.loads(path.read_text())
    assert set(data) == {"model", "num_layers", "statistic", "weights", "settings", "version"}


def test_calibrate_rejects_bad_arguments(llama):
    with pytest.raises(ValueError, match="at least one prompt"):
        calibrate(llama, [])
    with pytest.raises(ValueError, match="calibrate.statistic must be one of 'entropy', 'coverage', got 'variance'"):
        calibrate(llama, [random_prompt(1, 10)[0]], statistic="variance")


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = {"version": 1, "model": "m", "num_layers": 2, "statistic": "entropy", "settings": {}, "weights": [0.6, 0.4]}


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object, got list"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "weights"}), r"lacks the field\(s\) \['weights'\]"),
    (json.dumps(GOOD | {"weights": [0.6, 0.3, 0.1]}), "must be a list of num_layers=2 numbers, got 3"),
    (json.dumps(GOOD | {"weights": [0.6, -0.4]}), "finite numbers >= 0"),
    (json.dumps(GOOD | {"weights": [0, 0]}), "must not all be zero"),
    (json.dumps(GOOD | {"weights": ["a", 1]}), "finite numbers >= 0"),
    (json.dumps(GOOD | {"version": 2}), "Profile.version must be 1"),
    (json.dumps(GOOD | {"statistic": "vibes"}), "Profile.statistic must be one of"),
    (json.dumps(GOOD | {"num_layers": "2"}), "Profile.num_layers must be an integer"),
])
def test_malformed_files_give_clear_errors(tmp_path, content, message):
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(ProfileError, match=message) as info:
        Profile.load(path)
    assert str(path) in str(info.value) and isinstance(info.value, (ValueError, KVPressLabError))


def test_unknown_profile_names_list_the_shipped_ones():
    assert "smollm2-135m-instruct" in shipped_profiles()
    with pytest.raises(ProfileError, match=r"neither an existing file nor a shipped profile \(shipped: .*smollm2-135m-instruct"):
        Profile.load("no-such-profile")


def test_the_shipped_default_profile_fits_the_embedded_model():
    profile = Profile.load("smollm2-135m-instruct")
    assert profile.num_layers == 30 and profile.model == "smollm2-135m-instruct"
    assert sum(profile.weights) == pytest.approx(1.0) and min(profile.weights) > 0


def test_synthetic_prompts_are_seeded_exact_length_and_end_with_the_question(char_tokenizer):
    a = synthetic_prompts(char_tokenizer, 2, 300, seed=5)
    assert [p.shape for p in a] == [torch.Size([300])] * 2 and a[0].dtype == torch.long
    assert all(torch.equal(x, y) for x, y in zip(a, synthetic_prompts(char_tokenizer, 2, 300, seed=5)))
    assert not torch.equal(a[0], a[1])
    assert "".join(char_tokenizer.convert_ids_to_tokens(a[0].tolist())).endswith("? answer:")
    assert "record: the access code of" in synthetic_text(2000, seed=1).lower()


@pytest.fixture(scope="module")
def char_tokenizer():
    """A character-level tokenizer over the tiny models' 97-id vocabulary (no download)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz0123456789 .,:;?!'\"|()[]=+-_\n"
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {c: 4 + i for i, c in enumerate(chars)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, llama, char_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    llama.save_pretrained(folder)
    char_tokenizer.save_pretrained(folder)
    return folder


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvpress-lab calibrate")
    add_calibrate_arguments(parser)
    return parser.parse_args(argv)


def test_cli_glue_with_synthetic_prompts(checkpoint, tmp_path, capsys):
    out = tmp_path / "profile.json"
    args = parse("--model", str(checkpoint), "--synthetic", "2", "--length", "64", "--window", "8", "--out", str(out))
    assert run_calibrate(args) == 0
    profile = Profile.load(out)
    assert profile.num_layers == 4 and profile.settings["source"] == "synthetic"
    assert profile.settings["num_prompts"] == 2 and profile.settings["prompt_lengths"] == [64, 64]
    assert "Wrote a 4-layer entropy profile" in capsys.readouterr().out


def test_cli_glue_with_a_prompts_file(checkpoint, tmp_path):
    prompts = write(tmp_path, "prompts.txt", "first prompt, long enough.\n\n\nsecond one: also fine?\n\nthird\n")
    out = tmp_path / "p.json"
    args = parse("--model", str(checkpoint), "--prompts-file", str(prompts), "--length", "12", "--statistic", "coverage",
                 "--out", str(out))
    assert run_calibrate(args) == 0
    profile = Profile.load(out)
    assert profile.statistic == "coverage" and profile.settings["prompt_lengths"] == [12, 12, 5]


def test_cli_glue_errors_are_user_errors(checkpoint, tmp_path):
    with pytest.raises(SystemExit):  # argparse: the two prompt sources exclude each other
        parse("--synthetic", "2", "--prompts-file", "x.txt", "--out", "o.json")
    with pytest.raises(ProfileError, match="cannot read --prompts-file"):
        run_calibrate(parse("--model", str(checkpoint), "--prompts-file", str(tmp_path / "missing.txt"), "--out", "o.json"))
    with pytest.raises(ProfileError, match="--length must be >= 2, got 1"):
        run_calibrate(parse("--model", str(checkpoint), "--length", "1", "--out", "o.json"))
