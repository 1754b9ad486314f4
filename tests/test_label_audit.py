"""The label audit of ``mllm data check`` and the tokenizer/template pair probe (issue 13).

The audit's positions are checked against a reference computed from nothing but the
tokenizer and ``Template.generation_prompt``: a reply's first token to generate is the one at
``len(tokenizer(prompt).input_ids)``. Two deliberately broken Vicuna templates stand for the
old behaviour: ``OLD_RULE`` leaves the space after ``"ASSISTANT:"`` untrained (the lone
``'▁'`` before ``"2"`` is never a target), ``SPACE_PROMPT`` prompts with ``"ASSISTANT: "``,
whose trailing space tokenizes alone while training merges it into ``'▁A'``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mllm.commands.data_check import check_main
from mllm.config.schema import DataConfig
from mllm.data import (
    IGNORE_INDEX,
    TEMPLATES,
    Segment,
    Template,
    TokenizedSample,
    check_tokenizer,
    get_template,
    render_text,
)
from mllm.data.label_audit import LabelRuleError, audit_rendered, check_pair, probe_pair
from mllm.data.preflight import TokenSettings, check_data
from mllm.data.validate import place_image_markers

VICUNA = get_template("vicuna_v1")


@dataclasses.dataclass(frozen=True)
class _SeparatorUntrained(Template):
    """Renders as before issue 13: the separator after the header is not a target."""

    def render(self, conversation, *, image_token="<image>") -> list[Segment]:
        segments: list[Segment] = []
        for segment in super().render(conversation, image_token=image_token):
            if segment.is_target and segment.text.startswith(" "):
                segments += [Segment(" ", False), Segment(segment.text[1:], True)]
            else:
                segments.append(segment)
        return segments


@dataclasses.dataclass(frozen=True)
class _FirstReplyUntrained(Template):
    """Trains nothing of the first reply."""

    def render(self, conversation, *, image_token="<image>") -> list[Segment]:
        segments = super().render(conversation, image_token=image_token)
        first = next(i for i, segment in enumerate(segments) if segment.is_target)
        segments[first] = Segment(segments[first].text, False)
        return segments


OLD_RULE = _SeparatorUntrained(**{**dataclasses.asdict(VICUNA), "name": "vicuna_old_rule"})
SPACE_PROMPT = dataclasses.replace(VICUNA, name="vicuna_space_prompt", generation_prefix=None)
NO_FIRST = _FirstReplyUntrained(**{**dataclasses.asdict(VICUNA), "name": "vicuna_no_first"})
BROKEN = {template.name: template for template in (OLD_RULE, SPACE_PROMPT, NO_FIRST)}

HARD = ["2", "1999", "Yellow", "日本語です", "(B) 12", "A cat."]
RECORDS = [
    {"id": f"r{i}", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": reply},
        {"from": "human", "value": "And the other one?"},
        {"from": "gpt", "value": HARD[(i + 1) % len(HARD)]},
    ]}
    for i, reply in enumerate(HARD)
] + [
    {"id": "text", "conversations": [
        {"from": "system", "value": "Answer briefly."},
        {"from": "human", "value": "Year?"},
        {"from": "gpt", "value": "1999"},
    ]},
    # The second prompt ends past MAX_LENGTH: that reply is cut away, the first one kept.
    {"id": "cut", "conversations": [
        {"from": "human", "value": "Count?"},
        {"from": "gpt", "value": "2"},
        {"from": "human", "value": "Tell me more. " * 30},
        {"from": "gpt", "value": "Yellow"},
    ]},
]  # fmt: skip
MAX_LENGTH = 160
IMAGE_TOKENS = 4


@pytest.fixture(params=["sentencepiece", "byte_level"])
def any_tokenizer(request, tokenizer, llama3_tokenizer):
    return tokenizer if request.param == "sentencepiece" else llama3_tokenizer


def audit(template: Template, tokenizer, records=RECORDS):
    turns = [place_image_markers(r["conversations"], "image" in r, "<image>") for r in records]
    rendered = [render_text(t, template, image_token="<image>") for t in turns]
    image_id = check_tokenizer(tokenizer, template, image_token="<image>")
    return turns, audit_rendered(
        turns,
        rendered,
        template,
        tokenizer,
        image_token="<image>",
        image_token_id=image_id,
        num_image_tokens=IMAGE_TOKENS,
        max_length=MAX_LENGTH,
    )


def expected(template: Template, tokenizer, turns, sample) -> dict[int, str]:
    """Per reply, the kind from the rule alone: prompt ids, then the label after them."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    kinds = {}
    gpt_turns = [i for i, turn in enumerate(turns) if turn["from"] == "gpt"]
    for reply, turn in enumerate(gpt_turns):
        prompt = tokenizer(template.generation_prompt(turns[:turn])).input_ids
        prompt = [
            p for token in prompt for p in [token] * (IMAGE_TOKENS if token == image_id else 1)
        ]
        if len(prompt) >= len(sample.input_ids):
            kinds[reply] = "reply_cut"
        elif sample.input_ids[: len(prompt)] != prompt:
            kinds[reply] = "prompt_not_prefix"
        elif sample.labels[len(prompt)] == IGNORE_INDEX:
            kinds[reply] = "first_token_untrained"
    return kinds


@pytest.mark.parametrize("name", ["vicuna_v1", "llama3", "chatml", "minigpt4", *BROKEN])
def test_audit_agrees_with_the_generation_prompt(any_tokenizer, name: str) -> None:
    template = BROKEN.get(name) or get_template(name)
    turns, audited = audit(template, any_tokenizer)
    for record_turns, result in zip(turns, audited, strict=True):
        if not isinstance(result.sample, TokenizedSample):  # nothing trained: dropped
            assert name == "vicuna_no_first" and result.replies == 0
            continue
        assert result.replies == len(record_turns) // 2
        got = {p.reply: p.kind for p in result.problems}
        want = expected(template, any_tokenizer, record_turns, result.sample)
        if name == "vicuna_no_first":  # the rule above sees the first token only
            want[0] = "reply_untrained"
        assert got == want
    kinds = [p.kind for a in audited for p in a.problems]
    if name in TEMPLATES:  # today's templates: only the reply cut away by truncation
        assert kinds == ["reply_cut"]
    elif name == "vicuna_old_rule":  # every reply that starts with a lone space piece
        assert kinds.count("first_token_untrained") >= 8
    else:
        kind = "prompt_not_prefix" if name == "vicuna_space_prompt" else "reply_untrained"
        assert kinds.count(kind) >= 4


def test_plain_captions_are_trained_from_their_first_token(any_tokenizer) -> None:
    records = [{"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": reply}
    ]} for reply in HARD]  # fmt: skip
    turns, audited = audit(get_template("plain"), any_tokenizer, records)
    assert [(a.replies, a.problems) for a in audited] == [(1, ())] * len(HARD)
    for record_turns, result in zip(turns, audited, strict=True):
        assert expected(get_template("plain"), any_tokenizer, record_turns, result.sample) == {}


def test_problems_show_the_tokens_at_the_boundary(tokenizer) -> None:
    _, audited = audit(OLD_RULE, tokenizer)
    (first, *_) = audited[0].problems  # record r0, reply "2"
    assert (first.reply, first.kind) == (0, "first_token_untrained")
    assert first.tokens == "'N' 'T' ':' | '▁' '2'* '</s>'*"
    _, audited = audit(SPACE_PROMPT, tokenizer)
    cat = next(p for p in audited[5].problems if p.reply == 0)  # record r5, reply "A cat."
    assert cat.kind == "prompt_not_prefix"
    assert cat.tokens.startswith("prompt 'T' ':' '▁' | but training has 'N' 'T' ':' '▁A'* ")
    assert cat.tokens.endswith("(the prompt ends inside '▁A')")


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "hard.json"
    path.write_text(json.dumps(RECORDS, ensure_ascii=False))
    return path


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_label_errors_fail_the_check_under_either_policy(tokenizer, data_file, policy) -> None:
    tokens = TokenSettings(tokenizer, IMAGE_TOKENS, MAX_LENGTH)

    def check(template):
        return check_data(
            [data_file],
            name="data",
            image_folder=None,
            template=template,
            tokens=tokens,
            policy=policy,
            check_images=False,
        )

    good = check(VICUNA)
    assert [f.kind for f in good.findings] == ["truncated", "reply_cut"] and not good.fatal
    assert good.label_summary() == {
        "replies": 15,
        "first_token_not_target": 0,
        "first_token_not_target_share": 0.0,
        "no_target": 0,
        "prompt_not_prefix": 0,
        "cut_by_truncation": 1,
    }
    bad = check(OLD_RULE)
    assert bad.fatal and bad.findings[0].kind == "pair_probe" and bad.findings[0].index is None
    summary = bad.label_summary()
    assert summary["first_token_not_target"] == bad.label_errors >= 8
    assert summary["first_token_not_target_share"] == summary["first_token_not_target"] / 15
    text = bad.format(max_listed=2)
    assert "ERROR stage [pair_probe] template 'vicuna_old_rule' with tokenizer " in text
    assert (
        f"{data_file}: record 0 (id 'r0') [first_token_untrained] reply 1 (conversations[1])"
        in text
    )
    assert "more [first_token_untrained] not listed" in text
    assert "FAIL: training would stop: the tokenizer/template pair fails the probe" in text
    assert "labels: 15 replies; first token not a target: " in text


@pytest.fixture
def broken_cli(monkeypatch):
    """Lets ``--template NAME`` name the broken templates (only the CLI's lookup sees them)."""
    import mllm.data.preflight.check as cli

    monkeypatch.setattr(cli, "get_template", lambda name: BROKEN.get(name) or get_template(name))


def test_cli_reports_labels_in_text_and_json(
    broken_cli, tiny_tokenizer_dir, data_file, tmp_path, capsys
) -> None:
    base = [str(data_file), "--no-images", "--tokenizer", str(tiny_tokenizer_dir)]
    base += ["--max-length", str(MAX_LENGTH), "--image-tokens", str(IMAGE_TOKENS)]
    report = tmp_path / "report.json"
    assert check_main([*base, "--template", "vicuna_v1", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "labels: 15 replies; first token not a target: 0 (0.00%), no target: 0" in out
    assert "WARNING" in out and "[reply_cut] reply 2 (conversations[3])" in out
    assert json.loads(report.read_text())[0]["labels"]["cut_by_truncation"] == 1
    assert check_main([*base, "--template", "vicuna_space_prompt", "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert "this tokenizer/template pair would train replies wrong" in out
    assert f"template 'vicuna_space_prompt' with tokenizer '{tiny_tokenizer_dir}'" in out
    saved = json.loads(report.read_text())[0]
    assert saved["fatal"] and saved["labels"]["prompt_not_prefix"] >= 2
    assert saved["counts"]["error"]["pair_probe"] == 1


def test_probe_passes_every_template_and_rejects_the_old_rule(any_tokenizer) -> None:
    for name in TEMPLATES.names():
        assert probe_pair(any_tokenizer, get_template(name)) == []
    old = probe_pair(any_tokenizer, OLD_RULE)
    assert {p.reply_text for p in old} == {"2", "1999", "Yellow", "日本"}
    assert {(p.exchange, p.problem.kind) for p in old} == {
        (1, "first_token_untrained"),
        (2, "first_token_untrained"),
    }
    space = probe_pair(any_tokenizer, SPACE_PROMPT)
    assert {p.problem.kind for p in space} == {"prompt_not_prefix"}
    assert "A cat." in {p.reply_text for p in space}
    check_pair(any_tokenizer, VICUNA)  # no error


def test_training_stops_before_reading_data_on_a_broken_pair(
    tokenizer, tmp_path, monkeypatch
) -> None:
    import mllm.data.stage_data as builder

    monkeypatch.setattr(builder, "resolve_template", lambda name, tokenizer: BROKEN[name])
    built = SimpleNamespace(
        tokenizer=tokenizer,
        image_processor=None,
        image_token="<image>",
        model=SimpleNamespace(num_image_tokens=IMAGE_TOKENS),
    )
    data = DataConfig(path=str(tmp_path / "never_read.json"))
    with pytest.raises(LabelRuleError) as error:
        builder.build_dataset(data, built, "vicuna_old_rule")  # type: ignore[arg-type]
    message = str(error.value)
    assert message.startswith(
        f"template 'vicuna_old_rule' with tokenizer '{tokenizer.name_or_path}': this tokenizer/template pair would train"
    )
    assert (
        "reply '2' (exchange 1) [first_token_untrained]: the first token to generate is not a target: 'N' 'T' ':' | '▁' '2'* '</s>'*"
        in message
    )
