"""Generate reference WER values from Seed-TTS-eval's own normalisation code.

This script does NOT reimplement the Seed-TTS-eval rule.  It parses
``run_wer.py`` from BytedanceSpeech/seed-tts-eval with :mod:`ast`, takes the
``punctuation_all = ...`` assignment and the ``process_one`` function
definition verbatim (``ast.get_source_segment``), and execs them in a fresh
namespace that only contains::

    from jiwer import compute_measures
    from zhon.hanzi import punctuation
    import string

plus a global ``lang`` ("en" or "zh") that is set per case, because
``process_one`` reads the module-level ``lang``.  For ``lang == "zh"`` the
hypothesis (only) is first passed through ``zhconv.convert(h, 'zh-cn')``,
exactly as ``run_asr`` does to the Paraformer transcription; the reference
text is never touched.  The ``hypothesis`` stored in the JSON is the raw
input, before zhconv.

For each case the output records ``name``, ``lang``, ``reference``,
``hypothesis`` and either ``wer`` (index 2 of the tuple that ``process_one``
returns) or, when ``process_one`` raises, ``error`` as
``"<exception class name>: <message>"``.

Where ``run_wer.py`` comes from (``--seed-tts-eval``):

* a path to a ``run_wer.py`` file, or
* a checkout directory containing ``run_wer.py``, or
* a git directory (bare repository, e.g. the one the ``fetch`` tool returns,
  or a checkout's ``.git``); the file is then read with
  ``git --git-dir=DIR show COMMIT:run_wer.py``.

``--commit`` (default: the pinned commit below) selects the revision for a git
directory.  For a file or checkout the commit recorded in the JSON is
``git rev-parse HEAD`` of the enclosing repository when there is one, else the
``--commit`` value as given.

Run it in a separate virtualenv, outside the project, with the libraries that
Seed-TTS-eval's ``run_wer.py`` imports (jiwer 4 removed ``compute_measures``,
so jiwer must be 3.x)::

    python3.11 -m venv /tmp/seedtts-ref
    /tmp/seedtts-ref/bin/pip install "jiwer<4" zhon zhconv
    /tmp/seedtts-ref/bin/python tests/data/make_seedtts_wer_reference.py \\
        --seed-tts-eval /path/to/seed-tts-eval.git \\
        --out tests/data/seedtts_wer_reference.json

Produced with: seed-tts-eval 752f4297f090c46bb1a55a1f7439e5944ddefe8d,
jiwer 3.1.0, zhon 2.1.1, zhconv 1.4.3, rapidfuzz 3.14.6 (Python 3.11).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from importlib.metadata import version

PINNED_COMMIT = "752f4297f090c46bb1a55a1f7439e5944ddefe8d"
REPO = "BytedanceSpeech/seed-tts-eval"
FILE = "run_wer.py"

NBSP = "\u00a0"

# (name, lang, reference, hypothesis)
CASES: list[tuple[str, str, str, str]] = [
    # ---------------------------------------------------------------- English
    ("en_identical", "en", "Hello world", "Hello world"),
    ("en_case_only", "en", "Hello World", "hello world"),
    ("en_upper_hyp", "en", "the quick brown fox", "THE QUICK BROWN FOX"),
    ("en_ascii_punct_ref", "en", "Hello, world! How are you?", "hello world how are you"),
    ("en_ascii_punct_hyp", "en", "hello world", "Hello, world."),
    ("en_semicolon_colon", "en", "first; second: third", "first second third"),
    ("en_brackets", "en", "the (big) [red] {dog}", "the big red dog"),
    ("en_slash_joins", "en", "and/or", "and or"),
    ("en_email_symbols", "en", "user_name@example.com", "username at example dot com"),
    ("en_abbrev_dots", "en", "e.g. this one", "eg this one"),
    ("en_title_possessive", "en", "Mr. Smith's car", "mister smith's car"),
    ("en_substitution", "en", "the cat sat on the mat", "the cat sat on a mat"),
    ("en_insertion", "en", "the cat sat", "the big cat sat"),
    ("en_deletion", "en", "the big cat sat", "the cat sat"),
    ("en_many_insertions", "en", "hi", "hi there my friend"),
    ("en_all_wrong", "en", "one two three", "four five six"),
    ("en_empty_hyp", "en", "the cat sat", ""),
    ("en_punct_only_hyp", "en", "the cat sat", "..."),
    ("en_punct_only_hyp_spaced", "en", "the cat sat", "! ? ."),
    ("en_curly_only_hyp", "en", "yes", "“…”"),
    ("en_straight_apostrophe_same", "en", "don't stop", "don't stop"),
    ("en_straight_vs_no_apostrophe", "en", "don't stop", "dont stop"),
    ("en_curly_apostrophe_ref", "en", "don’t stop", "don't stop"),
    ("en_curly_apostrophe_hyp", "en", "don't stop", "don’t stop"),
    ("en_curly_vs_no_apostrophe", "en", "don’t stop", "dont stop"),
    ("en_curly_both", "en", "I’m sure it’s fine", "I’m sure it’s fine"),
    ("en_curly_upper", "en", "DON’T GO", "don't go"),
    ("en_curly_single_quotes", "en", "he said ‘yes’ loudly", "he said yes loudly"),
    ("en_straight_single_quotes", "en", "he said 'yes' loudly", "he said yes loudly"),
    ("en_curly_double_quotes", "en", "she said “hello” to me", "she said hello to me"),
    ("en_straight_double_quotes", "en", 'she said "hello" to me', "she said hello to me"),
    ("en_em_dash_no_space", "en", "wait—what happened", "wait what happened"),
    ("en_em_dash_spaced", "en", "wait — what happened", "wait what happened"),
    ("en_em_dash_hyp", "en", "wait what happened", "wait—what happened"),
    ("en_en_dash_no_space", "en", "pages 10–20 are missing", "pages 10 20 are missing"),
    ("en_en_dash_spaced", "en", "Paris – the capital", "paris the capital"),
    ("en_hyphen_ref", "en", "a state-of-the-art model", "a state of the art model"),
    ("en_hyphen_both", "en", "a state-of-the-art model", "a state-of-the-art model"),
    ("en_hyphen_hyp", "en", "a state of the art model", "a state-of-the-art model"),
    ("en_double_hyphen", "en", "yes--no", "yes no"),
    ("en_ellipsis_char", "en", "well… I think so", "well I think so"),
    ("en_ellipsis_char_spaced", "en", "well … I think so", "well I think so"),
    ("en_three_dots", "en", "well... I think so", "well I think so"),
    ("en_three_dots_no_space", "en", "well...I think so", "well I think so"),
    ("en_number_comma", "en", "it costs 1,000 dollars", "it costs 1000 dollars"),
    ("en_number_words", "en", "it costs 1000 dollars", "it costs one thousand dollars"),
    ("en_decimal", "en", "about 3.5 percent", "about 35 percent"),
    ("en_decimal_words", "en", "about 3.5 percent", "about three point five percent"),
    ("en_percent_sign", "en", "a 20% increase", "a 20 increase"),
    ("en_percent_word", "en", "a 20% increase", "a 20 percent increase"),
    ("en_tab", "en", "hello\tworld", "hello world"),
    ("en_tab_space", "en", "hello \tworld", "hello world"),
    ("en_tab_after_punct", "en", "hello,\tworld", "hello world"),
    ("en_nbsp", "en", f"hello{NBSP}world", "hello world"),
    ("en_nbsp_hyp", "en", "hello world", f"hello{NBSP}world"),
    ("en_double_space", "en", "hello  world", "hello world"),
    ("en_triple_space", "en", "hello   world", "hello world"),
    ("en_leading_trailing_spaces", "en", "  hello world  ", " hello world "),
    ("en_fullwidth_punct", "en", "hello，world。", "hello world"),
    ("en_fullwidth_punct_spaced", "en", "hello， world！", "hello world"),
    ("en_ideographic_space", "en", "hello\u3000world", "hello world"),
    ("en_middle_dot", "en", "Jean·Paul", "jean paul"),
    ("en_ref_only_punct", "en", "...", "hello"),
    ("en_ref_only_dashes_spaced", "en", "— —", "hello"),
    ("en_ref_empty", "en", "", ""),
    # ---------------------------------------------------------------- Chinese
    ("zh_identical", "zh", "今天天气很好", "今天天气很好"),
    ("zh_fullwidth_comma_period_ref", "zh", "今天，天气很好。", "今天天气很好"),
    ("zh_fullwidth_punct_hyp", "zh", "今天天气很好", "今天，天气很好！"),
    ("zh_question_exclaim", "zh", "你好吗？我很好！", "你好吗我很好"),
    ("zh_semicolon_colon", "zh", "注意：第一；第二", "注意第一第二"),
    ("zh_fullwidth_parens", "zh", "北京（中国）", "北京中国"),
    ("zh_corner_brackets", "zh", "他说「你好」", "他说你好"),
    ("zh_book_title_marks", "zh", "我读了《红楼梦》", "我读了红楼梦"),
    ("zh_enumeration_comma", "zh", "苹果、香蕉、橘子", "苹果香蕉橘子"),
    ("zh_ascii_punct", "zh", "你好,世界!", "你好世界"),
    ("zh_curly_quotes", "zh", "他说“你好”", "他说你好"),
    ("zh_ellipsis", "zh", "等等……好吧", "等等好吧"),
    ("zh_em_dash", "zh", "北京——中国的首都", "北京中国的首都"),
    ("zh_middle_dot", "zh", "约翰·史密斯", "约翰史密斯"),
    ("zh_hyphen_latin", "zh", "COVID-19疫情", "COVID19疫情"),
    ("zh_apostrophe_kept", "zh", "他的iPhone's屏幕", "他的iPhones屏幕"),
    ("zh_substitution", "zh", "我喜欢吃苹果", "我喜欢吃平果"),
    ("zh_insertion", "zh", "我喜欢苹果", "我很喜欢苹果"),
    ("zh_deletion", "zh", "我很喜欢苹果", "我喜欢苹果"),
    ("zh_all_wrong", "zh", "你好", "再见"),
    ("zh_empty_hyp", "zh", "你好", ""),
    ("zh_punct_only_hyp", "zh", "你好", "。。。"),
    ("zh_traditional_hyp", "zh", "这是语音合成", "這是語音合成"),
    ("zh_traditional_hyp_punct", "zh", "这是语音合成", "這是語音合成。"),
    ("zh_traditional_ref", "zh", "這是語音", "这是语音"),
    ("zh_traditional_both", "zh", "這是語音", "這是語音"),
    ("zh_traditional_variant", "zh", "干净的衣服", "乾淨的衣服"),
    ("zh_mixed_latin", "zh", "我用Python写代码", "我用Python写代码"),
    ("zh_mixed_latin_case", "zh", "我用Python写代码", "我用python写代码"),
    ("zh_mixed_latin_spaces", "zh", "我用 Python 写代码", "我用Python写代码"),
    ("zh_mixed_english_word", "zh", "这个model很好", "这个模型很好"),
    ("zh_fullwidth_latin", "zh", "我用ＡＩ", "我用AI"),
    ("zh_spaces_between_words", "zh", "今天 天气 很好", "今天天气很好"),
    ("zh_double_space", "zh", "今天  天气", "今天天气"),
    ("zh_ideographic_space", "zh", "今天\u3000天气", "今天天气"),
    ("zh_nbsp", "zh", f"今天{NBSP}天气", "今天天气"),
    ("zh_tab", "zh", "今天\t天气", "今天天气"),
    ("zh_leading_trailing_spaces", "zh", "  你好  ", "你好"),
    ("zh_arabic_vs_hanzi_number", "zh", "我有100元", "我有一百元"),
    ("zh_number_comma", "zh", "共1,000人", "共1000人"),
    ("zh_decimal_percent", "zh", "增长了3.5%", "增长了35"),
    ("zh_percent_words", "zh", "增长了3.5%", "增长了百分之三点五"),
    ("zh_ref_only_punct", "zh", "。！？", "你好"),
    ("zh_ref_empty", "zh", "", "你好"),
]


def _is_git_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(
        os.path.join(path, "objects")
    )


def load_source(location: str, commit: str) -> tuple[str, str]:
    """Return (run_wer.py text, commit id to record)."""
    if os.path.isdir(location) and _is_git_dir(location):
        resolved = subprocess.run(
            ["git", f"--git-dir={location}", "rev-parse", f"{commit}^{{commit}}"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        text = subprocess.run(
            ["git", f"--git-dir={location}", "show", f"{resolved}:{FILE}"],
            check=True, capture_output=True, text=True,
        ).stdout
        return text, resolved
    path = os.path.join(location, FILE) if os.path.isdir(location) else location
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head = subprocess.run(
        ["git", "-C", os.path.dirname(os.path.abspath(path)), "rev-parse", "HEAD"],
        capture_output=True, text=True,
    )
    return text, (head.stdout.strip() if head.returncode == 0 else commit)


def extract(source: str) -> str:
    """The `punctuation_all = ...` assignment and `def process_one`, verbatim."""
    tree = ast.parse(source)
    assign = func = None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "punctuation_all"
        ):
            assign = node
        elif isinstance(node, ast.FunctionDef) and node.name == "process_one":
            func = node
        elif isinstance(node, ast.FunctionDef) and node.name == "run_asr":
            # Guard the one thing we take from run_asr on trust: zh ASR output
            # goes through zhconv.convert(transcription, 'zh-cn').
            seg = ast.get_source_segment(source, node)
            if "zhconv.convert(transcription, 'zh-cn')" not in seg:
                raise SystemExit("run_asr no longer applies zhconv.convert(..., 'zh-cn')")
    if assign is None or func is None:
        raise SystemExit("punctuation_all / process_one not found in run_wer.py")
    return (
        ast.get_source_segment(source, assign)
        + "\n\n"
        + ast.get_source_segment(source, func)
        + "\n"
    )


def build_namespace(code: str) -> dict:
    ns: dict = {"__name__": "seedtts_run_wer_extract"}
    exec(
        "from jiwer import compute_measures\n"
        "from zhon.hanzi import punctuation\n"
        "import string\n",
        ns,
    )
    ns["lang"] = None
    exec(compile(code, f"<{REPO}/{FILE}>", "exec"), ns)
    return ns


def run_case(ns: dict, lang: str, reference: str, hypothesis: str) -> dict:
    import zhconv

    ns["lang"] = lang
    hypo = zhconv.convert(hypothesis, "zh-cn") if lang == "zh" else hypothesis
    try:
        result = ns["process_one"](hypo, reference)  # process_one(hypo, truth)
    except Exception as exc:  # noqa: BLE001 - recorded, not hidden
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"wer": float(result[2])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed-tts-eval", required=True,
                   help="run_wer.py file, checkout dir, or git dir of seed-tts-eval")
    p.add_argument("--commit", default=PINNED_COMMIT,
                   help="revision to read from a git dir (default: pinned commit)")
    p.add_argument("--out", required=True, help="output JSON path")
    args = p.parse_args(argv)

    source, commit = load_source(args.seed_tts_eval, args.commit)
    ns = build_namespace(extract(source))

    names = [c[0] for c in CASES]
    if len(names) != len(set(names)):
        raise SystemExit("duplicate case names")

    cases = []
    for name, lang, ref, hyp in CASES:
        cases.append({"name": name, "lang": lang, "reference": ref, "hypothesis": hyp,
                      **run_case(ns, lang, ref, hyp)})

    doc = {
        "source": {
            "repo": REPO,
            "commit": commit,
            "file": FILE,
            "functions": ["punctuation_all", "process_one"],
            "versions": {pkg: version(pkg) for pkg in ("jiwer", "zhon", "zhconv", "rapidfuzz")},
            "zhconv": "hypothesis converted with zhconv.convert(h, 'zh-cn') for lang zh, "
                      "as run_asr does",
        },
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum("error" in c for c in cases)
    print(f"wrote {args.out}: {len(cases)} cases "
          f"(en {sum(c['lang'] == 'en' for c in cases)}, "
          f"zh {sum(c['lang'] == 'zh' for c in cases)}, errors {n_err}) "
          f"from {REPO}@{commit}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
