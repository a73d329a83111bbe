"""The ``kvpress-lab`` lm-eval model type, on the local tasks in ``lm_eval_task/`` (offline).

Full vs compressed on a tiny random model (fast) and on the embedded model (slow): a compressed
run must really evict (prefill records), a budget at least as long as every prompt must give the
full run's outputs, and the compressed loglikelihood must equal an independent two-pass
reference (the context's kept entries gathered into a plain cache, the continuation fed on it).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason='pip install "kvpress-lab[eval]" to run the lm-eval integration tests')

import lm_eval  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from helpers.embedded import needs_distribution  # noqa: E402
from helpers.hf_char_tokenizer import hf_char_tokenizer  # noqa: E402
from helpers.reference import full_prefill, gathered_cache  # noqa: E402
from helpers.tiny_models import random_prompt, tiny_model  # noqa: E402
from kvpress_lab import Recipe  # noqa: E402
from kvpress_lab.integrations.lm_eval import MODEL_NAMES, KVPressLabLM, build_recipe  # noqa: E402

TASK_DIR = Path(__file__).with_name("lm_eval_task")
TASKS = ["kvpress_local_qa", "kvpress_local_choice"]


def evaluate(lm: KVPressLabLM, limit: int | None = None) -> dict:
    """``{task: [(response, filtered)...]}`` plus the metrics, for ``lm`` on the local tasks."""
    results = lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=TaskManager(include_path=str(TASK_DIR)),
                                      log_samples=True, bootstrap_iters=0, limit=limit)
    samples = {task: [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])] for task in TASKS}
    return {"samples": samples, "metrics": {task: results["results"][task] for task in TASKS}}


def loglikelihoods(samples: list) -> list[tuple[float, bool]]:
    """``[(log p, is_greedy)]`` of every choice of every document (multiple_choice responses)."""
    return [(float(resp[0][0]), bool(resp[0][1])) for doc in samples for resp in doc]


# -- arguments -------------------------------------------------------------------------------


def test_model_args_build_the_recipe(tmp_path):
    assert build_recipe(None) is None and build_recipe("full") is None and build_recipe("None") is None
    recipe = build_recipe("pyramidkv", budget=64, window=4, compression_ratio=None)
    assert recipe == Recipe.preset("pyramidkv", budget=64, window=4)
    path = tmp_path / "recipe.json"
    path.write_text(Recipe(allocator="uniform", scorer="h2o", budget=96).to_json())
    from_file = build_recipe(recipe_json=str(path), window=2)
    assert (from_file.scorer, from_file.budget, from_file.window) == ("h2o", 96, 2)
    assert build_recipe(recipe_json=str(path), compression_ratio=0.5).budget is None  # the ratio replaces the budget
    with pytest.raises(ValueError, match="not both"):
        build_recipe("snapkv", recipe_json=str(path))
    with pytest.raises(ValueError, match="budget given without a recipe"):
        build_recipe("full", budget=64)
    with pytest.raises(TypeError, match="preset name"):
        build_recipe(3)


def test_the_model_type_is_registered_under_both_names():
    for name in MODEL_NAMES:
        assert get_model(name) is KVPressLabLM


def test_the_command_line_wrapper_runs_lm_evals_cli():
    result = subprocess.run([sys.executable, "-m", "kvpress_lab.integrations.lm_eval", "run", "--help"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "--model_args" in result.stdout


# -- tiny random model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama"), hf_char_tokenizer()


def tiny_lm(tiny, **model_args) -> KVPressLabLM:
    model, tokenizer = tiny
    # max_length: above the tiny config's 512 positions (rotary: any position works), so no prompt is truncated
    return KVPressLabLM(pretrained=model, tokenizer=tokenizer, batch_size=2, max_length=1024, **model_args)


@pytest.fixture(scope="module")
def tiny_full(tiny):
    return evaluate(tiny_lm(tiny))


def test_tiny_compressed_run_evicts_in_both_request_types(tiny, tiny_full):
    lm = tiny_lm(tiny, recipe="snapkv", budget=32)
    compressed = evaluate(lm)
    kinds = {record.kind for record in lm.records}
    assert kinds == {"generate_until", "loglikelihood"}
    # 3 generation batches of 2 prompts, 6 loglikelihood contexts (3 choices share each)
    assert lm.compressed_prefills == 3 + 6
    assert all(record.evicted for record in lm.records)
    assert all(kept < 40 < n for record in lm.records for kept, n in zip(record.kept, record.prompt_tokens))
    full, cut = loglikelihoods(tiny_full["samples"]["kvpress_local_choice"]), loglikelihoods(compressed["samples"]["kvpress_local_choice"])
    assert max(abs(a[0] - b[0]) for a, b in zip(full, cut)) > 1e-2  # the scores come from the compressed cache
    assert "kvpress-lab: recipe snapkv (budget=32, window=8): 9 compressed prefills" in lm.compression_summary()


def test_tiny_budget_covering_every_prompt_gives_the_full_outputs(tiny, tiny_full):
    lm = tiny_lm(tiny, recipe="snapkv", budget=4096)
    same = evaluate(lm)
    assert lm.compressed_prefills == 9 and not any(record.evicted for record in lm.records)
    assert same["samples"]["kvpress_local_qa"] == tiny_full["samples"]["kvpress_local_qa"]
    for (a, greedy_a), (b, greedy_b) in zip(loglikelihoods(same["samples"]["kvpress_local_choice"]),
                                            loglikelihoods(tiny_full["samples"]["kvpress_local_choice"])):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4) and greedy_a == greedy_b


def test_tiny_loglikelihood_matches_an_independent_two_pass_reference(tiny):
    model, _ = tiny
    recipe = Recipe.preset("snapkv", budget=12, window=4)
    lm = tiny_lm(tiny, recipe=recipe)
    context, continuation = random_prompt(1, 40, seed=3)[0].tolist(), random_prompt(1, 5, seed=4)[0].tolist()
    (got, got_greedy), (again, _) = lm._loglikelihood_tokens([(None, context, continuation), (None, context, continuation)])
    assert lm.compressed_prefills == 1 and got == again  # one shared prefill, the pristine cache copied per request

    ids = torch.tensor([context])
    with recipe.apply(model, record_indices=True) as session, torch.no_grad():
        model(ids, use_cache=True)
    assert session.selections  # something was evicted
    with torch.no_grad():
        first = model(ids).logits[:, -1:]  # the prefill's last position runs before eviction
        cache = gathered_cache(full_prefill(model, ids), session.selections)
        rest = model(torch.tensor([continuation[:-1]]), position_ids=torch.arange(40, 44)[None], cache=cache,
                     use_cache=True).logits
    logp = torch.log_softmax(torch.cat([first, rest], dim=1)[0], dim=-1)
    target = torch.tensor(continuation)
    want = float(logp.gather(1, target[:, None]).sum())
    assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-4)
    assert got_greedy == bool((logp.argmax(-1) == target).all())


def test_tiny_perplexity_requests_are_refused_under_a_recipe(tiny):
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling .* recipe=full"):
        tiny_lm(tiny, recipe="snapkv").loglikelihood_rolling([])


def test_unknown_presets_fail_when_the_model_is_built(tiny):
    with pytest.raises(ValueError, match="Unknown preset 'pyramdkv'"):
        tiny_lm(tiny, recipe="pyramdkv")


# -- embedded model --------------------------------------------------------------------------


@pytest.mark.slow
@needs_distribution
def test_embedded_full_vs_compressed_on_the_local_tasks():
    lm = KVPressLabLM(pretrained="embedded", batch_size=3, device="cpu")
    full = evaluate(lm, limit=3)
    assert full["metrics"]["kvpress_local_qa"]["exact_match,strip"] == 1.0  # the model finds every fact uncompressed

    lm.recipe, lm.records = Recipe.preset("snapkv", budget=4096), []
    assert _close(evaluate(lm, limit=3), full)
    assert lm.records and not any(record.evicted for record in lm.records)

    lm.recipe, lm.records = Recipe.preset("streamingllm", budget=16), []
    compressed = evaluate(lm, limit=3)
    assert lm.records and all(record.evicted for record in lm.records)
    # the 4-digit answers span several tokens: past the first, they come from the 16 kept entries (sink + recent)
    assert compressed["metrics"]["kvpress_local_qa"]["exact_match,strip"] < 1.0
    print(json.dumps({"full": full["metrics"], "streamingllm-16": compressed["metrics"]}, indent=1, default=str))


def _close(a: dict, b: dict) -> bool:
    """Same generations, and loglikelihoods equal up to float noise."""
    if a["samples"]["kvpress_local_qa"] != b["samples"]["kvpress_local_qa"]:
        return False
    pairs = zip(loglikelihoods(a["samples"]["kvpress_local_choice"]), loglikelihoods(b["samples"]["kvpress_local_choice"]))
    return all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-4) and gx == gy for (x, gx), (y, gy) in pairs)
