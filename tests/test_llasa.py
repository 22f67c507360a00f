"""LLaSA's prompt and token layout, checked against the reference's ids, and the core's
prune / generate / distil path on a tiny random LLaSA."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_llasa import llasa_tokenizer, save_tiny_llasa  # noqa: E402

from orchestrator.families.llasa import LlasaFamily  # noqa: E402
from orchestrator.hub import MissingPiece  # noqa: E402
from orchestrator.world import Sample  # noqa: E402

# The layout from paper-and-models.md, written out independently of the implementation.
TEXT_UNDERSTANDING_START, TEXT_UNDERSTANDING_END = 128258, 128259
SPEECH_GENERATION_START, SPEECH_GENERATION_END = 128260, 128261
SPEECH_0 = 128264


@pytest.fixture(scope="module")
def family():
    return LlasaFamily(llasa_tokenizer(), dtype=torch.float32)


def test_prompt_ids_follow_the_model_card(family):
    tok = family.tokenizer
    ids = family.prompt_ids("Hello there.", "Say this", [0, 5, 65535])
    assert ids[-4:] == [SPEECH_GENERATION_START, SPEECH_0, SPEECH_0 + 5, SPEECH_0 + 65535]
    start, end = ids.index(TEXT_UNDERSTANDING_START), ids.index(TEXT_UNDERSTANDING_END)
    assert tok.decode(ids[start + 1 : end]) == "Hello there.Say this"  # the card: prompt_text + target_text
    before = tok.decode(ids[:start])
    assert before.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    assert before.endswith("Convert the text to speech:")
    # the user turn closes, the assistant turn opens and stays open (no <|eot_id|> after it)
    between = tok.decode(ids[end + 1 : -4])
    assert between == "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert ids.count(128009) == 1


def test_prompt_ids_equal_the_model_cards_own_construction(family):
    """The Llasa-1B card's prompted example, written out: `input_text = prompt_text + target_text`,
    the chat with the speech prefix in the assistant turn, `apply_chat_template(tokenize=True,
    continue_final_message=True)`. `<|s_k|>` is id 128264 + k in LLaSA's tokenizer; the tiny
    tokenizer lacks those 65,536 added tokens, so the prefix is appended as those ids."""
    tok = family.tokenizer
    prompt_text, target_text, prefix = "Hello there.", "Say this", [0, 5, 65535]
    input_text = prompt_text + target_text
    formatted_text = f"<|TEXT_UNDERSTANDING_START|>{input_text}<|TEXT_UNDERSTANDING_END|>"
    chat = [
        {"role": "user", "content": "Convert the text to speech:" + formatted_text},
        {"role": "assistant", "content": "<|SPEECH_GENERATION_START|>"},
    ]
    card = tok.apply_chat_template(chat, tokenize=True, continue_final_message=True)
    card = list(card["input_ids"] if hasattr(card, "keys") else card) + [SPEECH_0 + k for k in prefix]
    assert family.prompt_ids(prompt_text, target_text, prefix) == card
    spaced = LlasaFamily(tok, dtype=torch.float32, prompt_join=" ")  # the documented departure
    chat[0]["content"] = (
        f"Convert the text to speech:<|TEXT_UNDERSTANDING_START|>{prompt_text} {target_text}<|TEXT_UNDERSTANDING_END|>"
    )
    card_spaced = tok.apply_chat_template(chat, tokenize=True, continue_final_message=True)
    card_spaced = list(card_spaced["input_ids"] if hasattr(card_spaced, "keys") else card_spaced)
    assert spaced.prompt_ids(prompt_text, target_text, prefix) == card_spaced + [SPEECH_0 + k for k in prefix]
    assert len(card_spaced) == len(card) - len(prefix) + 1  # one token apart


def test_ids_of_speech_and_stop(family):
    assert family.end_id == SPEECH_GENERATION_END
    assert family.speech_ids[0] == SPEECH_0 and family.speech_ids[-2] == SPEECH_0 + 65535
    assert SPEECH_GENERATION_END in family.speech_ids.tolist() and len(family.speech_ids) == 65537
    assert family.codes_of([SPEECH_0 + 3, 42, SPEECH_0 + 7, SPEECH_GENERATION_END, SPEECH_0 + 1]) == [3, 7]


def test_training_ids_score_the_speech_span_only(family):
    prompt, target = Sample("a b", "spk", (1, 2)), Sample("c", "spk", (9, 8, 7))
    ids, labels = family.training_ids(prompt, target)
    assert ids[-6:] == [SPEECH_0 + 1, SPEECH_0 + 2, SPEECH_0 + 9, SPEECH_0 + 8, SPEECH_0 + 7, SPEECH_GENERATION_END]
    k = ids.index(SPEECH_GENERATION_START)
    assert labels[: k + 1] == [-100] * (k + 1) and labels[k + 1 :] == ids[k + 1 :]


def test_a_tokenizer_with_another_layout_is_refused():
    with pytest.raises(MissingPiece, match="LLaSA.s layout has 128256"):
        LlasaFamily(llasa_tokenizer(special_offset=128300))


def test_prune_generate_and_one_distillation_step(tmp_path, family):
    from orchestrator.batching import left_pad
    from orchestrator.config import load_config
    from orchestrator.distill.data import collate
    from orchestrator.distill.loop import loss_spec, make_state, train_step
    from orchestrator.prune.surgery import drop_layers

    teacher = family.load_model(str(save_tiny_llasa(tmp_path / "llasa", layers=4))).eval()
    assert teacher.dtype == torch.float32 and len(teacher.model.layers) == 4
    student = drop_layers(teacher, drop=[1, 2])
    prompts = [family.prompt_ids("hi", "one two", [1, 2, 3]), family.prompt_ids("a", "b", [4])]
    ids, mask = left_pad(prompts, family.pad_id)
    out = student.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=8,
        eos_token_id=family.end_id,
        pad_token_id=family.pad_id,
    )
    codes = [family.codes_of(row[ids.shape[1] :].tolist()) for row in out]
    assert all(len(c) > 0 for c in codes)  # the random model speaks: its tokens map back to codes
    assert all(0 <= c < 65536 for row in codes for c in row)

    cfg = load_config("configs/mini.yaml", ["distill.on_policy=0", "distill.weights.latent=1.0"])
    spec = loss_spec(
        cfg.distill, family.speech_ids, kept=[0, 3], n_teacher=4, pad_id=family.pad_id, end_id=family.end_id
    )
    for p in student.parameters():
        p.requires_grad_(True)
    state = make_state(student, 1e-3, 0, 4)
    pairs = [
        (Sample("hi", "s", (1, 2)), Sample("one two", "s", (3, 4, 5))),
        (Sample("a", "t", (6,)), Sample("b", "t", (7, 8))),
    ]
    before = student.model.layers[0].mlp.up_proj.weight.clone()
    metrics = train_step(state, [collate(family, pairs)], spec, teacher, 1.0)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["latent"] > 0
    assert not torch.equal(before, student.model.layers[0].mlp.up_proj.weight)
