"""generation.decode: the fast paths against transformers' generate, the speech-only head against
the full head, CosyVoice's repetition-aware sampler against CosyVoice's own code, and CosyVoice's
stop and length rules."""

import collections
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_cosyvoice2 import S, tiny_lm, tokenizer  # noqa: E402
from tiny_llasa import llasa_tokenizer, save_tiny_llasa  # noqa: E402

from orchestrator.config import load_config  # noqa: E402
from orchestrator.families.cosyvoice2 import CosyVoice2Family  # noqa: E402
from orchestrator.families.llasa import LlasaFamily  # noqa: E402
from orchestrator.generation.decode import DecodingRules, decode, decoding_rules, head_slice  # noqa: E402
from orchestrator.generation.sampling import Sampler, ras_sample  # noqa: E402

MINI_TEACHER = "orchestrator/assets/mini-teacher"


def greedy(family) -> DecodingRules:
    return decoding_rules(family, load_config("configs/mini.yaml").evaluate, do_sample=False)


@pytest.fixture(scope="module")
def mini():
    from orchestrator.builders import build_world

    world = build_world(load_config("configs/mini.yaml"))
    items = list(world.dev_items[:12])
    prompts = [world.family.prompt_ids(i.prompt_text, i.target_text, i.prompt_codes) for i in items]
    return world, world.family.load_model(MINI_TEACHER).eval(), prompts


def case(name, mini, tmp_path_factory):
    if name == "mini":
        world, model, prompts = mini
        return world.family, model, prompts, 60
    if name == "llasa":
        family = LlasaFamily(llasa_tokenizer(), dtype=torch.float32)
        model = family.load_model(str(save_tiny_llasa(tmp_path_factory.mktemp("llasa"), layers=3))).eval()
        prompts = [
            family.prompt_ids("hi", "one two", [1, 2, 3]),
            family.prompt_ids("a", "b", [4]),
            family.prompt_ids("", "longer text here", [7, 8]),
        ]
        return family, model, prompts, 12
    family = CosyVoice2Family(tokenizer(), S)
    model = tiny_lm(4, seed=2)
    with torch.no_grad():  # clear greedy margins, eos reached at different steps per prompt
        model.llm_decoder.weight.mul_(40)
        model.llm_decoder.bias[S] += 4
    prompts = [
        family.prompt_ids("ab", "cde", [1, 2, 3]),
        family.prompt_ids("x", "yz w", [5]),
        family.prompt_ids("", "q", []),
    ]
    return family, model, prompts, 12


@pytest.mark.integration  # the shipped teacher over a whole list
@pytest.mark.parametrize("name", ["mini", "llasa", "cosyvoice2"])
def test_every_path_gives_generates_greedy_tokens(name, mini, tmp_path_factory):
    family, model, prompts, n = case(name, mini, tmp_path_factory)
    rules = greedy(family)
    cap = [n] * len(prompts)
    reference = decode(model, prompts, rules, [0] * len(prompts), cap, path="generate")
    assert any(g.stopped for g in reference) or name == "llasa"
    assert decode(model, prompts, rules, [0] * len(prompts), cap, path="eager", speech_head=False) == reference
    head = set(rules.head_ids)
    for path in ("eager", "static", "compiled"):
        fast = decode(model, prompts, rules, [0] * len(prompts), cap, path=path, speech_head=True)
        for ref, got in zip(reference, fast):
            # equal wherever the full head chose a speech or stop id (always, for a trained teacher)
            same = next((k for k, t in enumerate(ref.tokens) if t not in head), len(ref.tokens))
            assert got.tokens[:same] == ref.tokens[:same], (path, ref, got)
            if same == len(ref.tokens):
                assert got == ref, (path, ref, got)
    if name == "mini":  # a trained teacher only ever speaks: every row is exactly the reference's
        assert decode(model, prompts, rules, [0] * len(prompts), cap, path="static") == reference


def test_speech_head_samples_the_full_heads_distribution_renormalised():
    from conftest import tiny_llama

    model = tiny_llama(layers=2, seed=3)
    head_ids = (5, *range(40, 97))  # a stop id, a gap of 34 blocked ids, then "speech"
    weight, bias, first = head_slice(model.lm_head, head_ids)
    assert weight.data_ptr() == model.lm_head.weight[5].data_ptr()  # a view of the head: nothing copied
    prompt = [1, 7, 9, 11]
    with torch.no_grad():
        full = model(input_ids=torch.tensor([prompt])).logits[0, -1]
        hidden = model.model(input_ids=torch.tensor([prompt])).last_hidden_state[0, -1]
    expected = torch.zeros(97)
    expected[list(head_ids)] = full[list(head_ids)].softmax(-1)  # masked to the head ids and renormalised
    sliced = torch.nn.functional.linear(hidden, weight, bias).softmax(-1)
    torch.testing.assert_close(sliced, expected[first : first + len(sliced)], rtol=1e-5, atol=1e-7)

    rules = DecodingRules(stop_ids=(5,), eos_id=5, head_ids=head_ids, pad_id=0, sampler=Sampler())
    n = 20000
    torch.manual_seed(0)
    draws = decode(model, [prompt] * n, rules, [0] * n, [1] * n, path="eager")
    counts = collections.Counter(g.tokens[0] if g.tokens else 5 for g in draws)
    assert set(counts) <= set(head_ids)
    empirical = torch.zeros(97)
    for t, c in counts.items():
        empirical[t] = c / n
    assert 0.5 * (empirical - expected).abs().sum() < 0.04  # total variation: ~0.02 expected from 20k draws


# FunAudioLLM/CosyVoice @ ace7c47f41bbd303aa6bf1ea80e6f9fbd595cd40, cosyvoice/utils/common.py (verbatim)
def ras_sampling(weighted_scores, decoded_tokens, sampling, top_p=0.8, top_k=25, win_size=10, tau_r=0.1):
    top_ids = nucleus_sampling(weighted_scores, top_p=top_p, top_k=top_k)
    rep_num = (torch.tensor(decoded_tokens[-win_size:]).to(weighted_scores.device) == top_ids).sum().item()
    if rep_num >= win_size * tau_r:
        weighted_scores[top_ids] = -float("inf")
        top_ids = random_sampling(weighted_scores, decoded_tokens, sampling)
    return top_ids


def nucleus_sampling(weighted_scores, top_p=0.8, top_k=25):
    prob, indices = [], []
    cum_prob = 0.0
    sorted_value, sorted_idx = weighted_scores.softmax(dim=0).sort(descending=True, stable=True)
    for i in range(len(sorted_idx)):
        # sampling both top-p and numbers.
        if cum_prob < top_p and len(prob) < top_k:
            cum_prob += sorted_value[i]
            prob.append(sorted_value[i])
            indices.append(sorted_idx[i])
        else:
            break
    prob = torch.tensor(prob).to(weighted_scores)
    indices = torch.tensor(indices, dtype=torch.long).to(weighted_scores.device)
    top_ids = indices[prob.multinomial(1, replacement=True)].item()
    return top_ids


def random_sampling(weighted_scores, decoded_tokens, sampling):
    top_ids = weighted_scores.softmax(dim=0).multinomial(1, replacement=True).item()
    return top_ids


@pytest.mark.parametrize("history", [[], [3, 4, 5], [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1], [0] * 12])
def test_ras_draws_as_cosyvoices_ras_sampling(history):
    torch.manual_seed(1)
    logits = torch.randn(40) * 2
    logits[0] += 3  # a dominant token, often repeated in the histories above
    weighted = logits.log_softmax(-1)
    n = 6000
    reference = collections.Counter(ras_sampling(weighted.clone(), list(history), 25) for _ in range(n))
    rows = torch.tensor([history] * n, dtype=torch.long).reshape(n, len(history))
    ours = collections.Counter(
        ras_sample(
            weighted.expand(n, -1).clone(), rows, torch.full((n,), len(history)), Sampler("ras", top_k=25, top_p=0.8)
        ).tolist()
    )
    tv = 0.5 * sum(abs(reference[t] - ours[t]) / n for t in set(reference) | set(ours))
    assert tv < 0.05, (reference.most_common(5), ours.most_common(5))


def test_ras_excludes_a_repeated_draw_and_keeps_only_the_window():
    weighted = torch.full((2, 6), -20.0)
    weighted[:, 2] = 0.0  # token 2 is all but certain
    history = torch.tensor([[2, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9], [2, 9, 9, 9, 9, 9, 9, 9, 9, 9, 1]])
    s = Sampler("ras", top_k=25, top_p=0.8, win_size=10, tau_r=0.1)
    # row 0: 2 is outside the last 10 tokens, kept; row 1: the window is the last 10 of 11 as well
    assert ras_sample(weighted.clone(), history, torch.tensor([11, 11]), s).tolist() == [2, 2]
    history[1, 5] = 2  # now once inside row 1's window: 1 >= 10 x 0.1, so 2 is excluded and drawn again
    out = ras_sample(weighted.clone(), history, torch.tensor([11, 11]), s)
    assert out[0] == 2 and out[1] != 2
    # what lies beyond a row's filled length is not its history
    history[1, 0] = 9
    assert ras_sample(weighted.clone(), history, torch.tensor([11, 5]), s).tolist() == [2, 2]


def cosyvoice_with(eos: float, fill1: float, fill2: float = -50.0):
    model = tiny_lm(2, seed=4)
    with torch.no_grad():
        model.llm_decoder.weight.zero_()
        model.llm_decoder.bias.zero_()
        model.llm_decoder.bias[S], model.llm_decoder.bias[S + 1], model.llm_decoder.bias[S + 2] = eos, fill1, fill2
    return model


def synthesize_lengths(model, texts):
    from orchestrator.evaluate.synthesis import synthesize
    from orchestrator.world import EvalItem

    family = CosyVoice2Family(tokenizer(), S)
    cfg = load_config(
        "configs/mini.yaml",
        ["evaluate.max_new_tokens=500", "evaluate.top_k=25", "evaluate.top_p=0.8", "evaluate.temperature=1.0"],
    ).evaluate
    items = [EvalItem(f"i{k}", "ab", (1, 2), t) for k, t in enumerate(texts)]
    return [len(c) for c in synthesize(model, family, items, cfg)]


def test_cosyvoice_rules_minimum_length_masks_eos_only():
    texts = ["abc", "hello", "q"]  # the char tokenizer: one token a character
    family = CosyVoice2Family(tokenizer(), S)
    assert [family.length_bounds("ab", t) for t in texts] == [(6, 60), (10, 100), (2, 20)]
    # eos all but certain: each row ends exactly at its minimum, int(2 x target tokens)
    assert synthesize_lengths(cosyvoice_with(eos=50, fill1=-50), texts) == [6, 10, 2]
    # nothing ends a row: each runs to its maximum, int(20 x target tokens)
    assert synthesize_lengths(cosyvoice_with(eos=-50, fill1=-50), texts) == [60, 100, 20]
    # a fill token is a stop id that ignore_eos does not guard: rows stop at once (CosyVoice at ace7c47)
    assert synthesize_lengths(cosyvoice_with(eos=-50, fill1=50), texts) == [0, 0, 0]
    assert synthesize_lengths(cosyvoice_with(eos=-50, fill1=-50, fill2=50), texts) == [0, 0, 0]


def test_cosyvoice_max_new_tokens_caps_its_own_bound():
    from orchestrator.generation.decode import length_bounds
    from orchestrator.world import EvalItem

    family = CosyVoice2Family(tokenizer(), S)
    items = [EvalItem("a", "", (), "hello"), EvalItem("b", "", (), "a" * 40)]
    assert length_bounds(family, items, 50) == ([10, 50], [50, 50])


@pytest.mark.integration  # the shipped teacher over the dev list
def test_sampled_wer_of_fast_and_reference_paths_agree_on_the_dev_set(mini):
    from orchestrator.evaluate.synthesis import evaluate_model

    world, model, _ = mini
    cfg = load_config("configs/mini.yaml", ["evaluate.passes=1"]).evaluate
    items = world.dev_items[:64]
    ref = evaluate_model(model, world, items, cfg.model_copy(update={"decode": "generate", "speech_head": False}))
    fast = evaluate_model(model, world, items, cfg.model_copy(update={"decode": "static"}))
    # same seeds; the draws differ only where the two paths' floating-point logits do
    assert abs(ref.wer - fast.wer) < 0.02 and abs(ref.sim - fast.sim) < 0.02
    assert ref.wer < 0.05 and fast.wer < 0.05
