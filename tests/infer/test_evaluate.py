"""lm-evaluation-harness on the project's model: the adapter's numbers, and the command on two local tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import wandb
from lm_eval.api.instance import Instance

from infer.evaluate import main as evaluate_main
from infer.lm_eval_model import DiffV2LM
from infer.load import load
from model.scoring import token_logprobs

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "infer" / "tasks"


def _request(kind: str, *args: object) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def _logprob(model: torch.nn.Module, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from one plain forward pass."""
    seq = torch.tensor([context + continuation])
    logp = F.log_softmax(model(seq)[0, :-1].double(), dim=-1)
    return sum(logp[len(context) - 1 + i, tok].item() for i, tok in enumerate(continuation))


@pytest.fixture(scope="module")
def lm(trained_run: Path) -> DiffV2LM:
    return DiffV2LM(load(trained_run), batch_size=2)


def test_loglikelihood_is_the_continuations_logprob_after_eot_and_the_context(lm: DiffV2LM):
    pairs = [("def f(x", "):"), ("import", " os"), ("x =", " 1\n"), ("", "class A:")]
    results = lm.loglikelihood([_request("loglikelihood", *pair) for pair in pairs])
    enc, eot = lm.enc, lm.eot_token_id
    for (context, continuation), (logprob, _) in zip(pairs, results, strict=True):
        ctx, cont = enc.encode_ordinary(context), enc.encode_ordinary(continuation)
        assert logprob == pytest.approx(_logprob(lm.model, [eot, *ctx], cont), abs=1e-4)
    # is_greedy: a continuation of the argmax token is greedy, any other token is not
    context = [eot, *enc.encode_ordinary("def f(x")]
    best = lm.model(torch.tensor([context]))[0, -1].argmax().item()
    assert lm._loglikelihood_tokens(
        [(("", ""), context, [best]), (("", ""), context, [(best + 1) % 2048])]
    ) == [
        (pytest.approx(_logprob(lm.model, context, [best]), abs=1e-4), True),
        (pytest.approx(_logprob(lm.model, context, [(best + 1) % 2048]), abs=1e-4), False),
    ]


def test_a_continuation_of_no_tokens_scores_zero_and_greedy(lm: DiffV2LM):
    context = [lm.eot_token_id, *lm.enc.encode_ordinary("def f(x")]
    assert lm._loglikelihood_tokens([(("def f(x", ""), context, [])]) == [(0.0, True)]


def test_rolling_loglikelihood_is_the_perplexity_scorers_sum(lm: DiffV2LM):
    text = "def add(a, b):\n    return a + b\n" * 6  # longer than the 64-token context: several windows
    (got,) = lm.loglikelihood_rolling([_request("loglikelihood_rolling", text)])
    tokens = lm.enc.encode_ordinary(text)
    assert len(tokens) > 64
    assert got == pytest.approx(token_logprobs(lm.model, tokens, lm.eot_token_id).double().sum().item())


def test_generate_until_is_the_greedy_continuation_cut_at_the_stop_string(lm: DiffV2LM):
    context = "class A:\n    def"
    (text,) = lm.generate_until([_request("generate_until", context, {"until": ["("], "max_gen_toks": 10})])
    prompt = torch.tensor([[lm.eot_token_id, *lm.enc.encode_ordinary(context)]])
    greedy = lm.enc.decode(lm.model.generate(prompt, 10, temperature=0.0)[0, prompt.shape[1] :].tolist())
    assert text == greedy.split("<|endoftext|>")[0].split("(")[0]


def test_evaluate_command_writes_scores_for_a_local_choice_task_and_a_generation_task(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO)  # the tasks' data_files are relative to the repository root
    out = tmp_path / "lm_eval.json"
    evaluate_main(
        [str(trained_run), "--tasks", "diffv2_python_mc", "diffv2_python_gen"]
        + ["--include-path", str(TASKS), "--out", str(out), "--wandb-mode", "offline"]
    )
    results = json.loads(out.read_text())["results"]
    mc, gen = results["diffv2_python_mc"], results["diffv2_python_gen"]
    assert 0.0 <= mc["acc,none"] <= 1.0 and 0.0 <= mc["acc_norm,none"] <= 1.0
    assert 0.0 <= gen["exact_match,none"] <= 1.0
    assert mc["sample_len"] == 10 and gen["sample_len"] == 8  # every document of the two JSONL files
    assert f"lm_eval/diffv2_python_mc/acc: {mc['acc,none']:.4f}" in capsys.readouterr().out
    wandb.teardown()  # stops wandb's service process, which writes the run file in the background
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")  # beside the JSON
    assert b"lm_eval/diffv2_python_gen/exact_match" in run_file.read_bytes()


def test_a_generation_task_on_a_model_vocab_larger_than_the_tokenizers_draws_only_decodable_ids(
    wide_vocab_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """lm-eval's generate_until masks the ids beyond the tokenizer, which hold the largest logits here:
    unmasked, greedy decoding picks them and the tokenizer cannot decode them."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO)  # the task's data_files are relative to the repository root
    out = tmp_path / "lm_eval.json"
    evaluate_main(
        [str(wide_vocab_export), "--tasks", "diffv2_python_gen", "--limit", "2"]
        + ["--include-path", str(TASKS), "--out", str(out)]
    )
    gen = json.loads(out.read_text())["results"]["diffv2_python_gen"]
    assert gen["sample_len"] == 2 and 0.0 <= gen["exact_match,none"] <= 1.0
