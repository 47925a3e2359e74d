"""ruTiE dialogues (evaluator/dialogue.py) checked against the official code's behaviour, no server.

The reference for every expectation is MERA_MULTIMODAL @0f32158 (`multimodal_tasks/rutie_*/`,
`custom_context_formers.py`, `scripts/log_to_submission.py`) run through the lm-eval fork
(`artemorloff/lm-evaluation-harness`, branch `adding_strict_chat_format_support`) with
`--apply_chat_template --fewshot_as_multiturn --pass_multimodal_args_to_chat_history`. The chat the
official harness sends is restated here independently (`official_chat`) and compared with ours.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import jinja2
import numpy as np
import pytest

from evaluator import dialogue
from evaluator.client import Outcome
from evaluator.dialogue import (
    answer_letter,
    build_turn_messages,
    current_text,
    media_counts,
    order_turns,
    over_limit,
)
from evaluator.media import encode_media
from evaluator.registry import get_task
from evaluator.requests import RequestOptions
from evaluator.runner import DispatchContext, RunConfig, Runner, TaskProgress
from evaluator.schema import AudioMedia, ChatRequest, ImageMedia, Sample
from evaluator.store import RunStore
from tests.media_factory import image_bytes

CARDS = Path(__file__).resolve().parent / "fixtures" / "mera_card_examples.jsonl"  # see fixtures/README.md
TEMPLATES = Path(__file__).resolve().parents[1] / "evaluator" / "assets" / "prompt_templates"

# The official doc_to_text Jinja expressions (rutie_vision_gen.yaml / rutie_audio_gen.yaml @0f32158), rendered
# with jinja2 below as the reference for the current turn's text.
OFFICIAL_DOC_TO_TEXT = {
    "ruTiE-Image": "{{instruction.replace('{', '{{').replace('}', '}}').replace('{{question}}', '{question}')"
                   ".replace('{{option_a}}', '{option_a}').replace('{{option_b}}', '{option_b}')"
                   ".replace('{{option_c}}', '{option_c}').replace('{{option_d}}', '{option_d}')"
                   ".format(**inputs).strip()}}",
    "ruTiE-Audio": "{{instruction.replace('{', '{{').replace('}', '}}')"
                   ".replace('{{option_a}}', '{option_a}').replace('{{option_b}}', '{option_b}')"
                   ".replace('{{option_c}}', '{option_c}').replace('{{option_d}}', '{option_d}')"
                   ".format(**inputs).strip()}}",
}
JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


# --- samples ----------------------------------------------------------------------------------------
def _media_for(task: str, seed: int):
    if task == "ruTiE-Image":
        rng = random.Random(seed)
        return {"image": ImageMedia(image_bytes("PNG", size=(32, 24), color=tuple(rng.randrange(256) for _ in range(3))))}
    return {"audio": AudioMedia(np.full(800, (seed % 97) / 100, np.float32), 16000)}


def make_turn(task: str, sample_id: int, instruction: str, *, with_media: bool = True, **inputs) -> Sample:
    options = {f"option_{c}": f"{c.upper()}{sample_id}" for c in "abcd"}
    if task == "ruTiE-Image":
        options["question"] = inputs.pop("question", f"вопрос {sample_id}")
    options.update(inputs)
    return Sample(task=task, split="test", index=sample_id, id=sample_id, instruction=instruction, inputs=options,
                  media=_media_for(task, sample_id) if with_media else {}, meta={"id": sample_id})


def hub_templates(task: str) -> list[str]:
    return json.loads((TEMPLATES / f"{task}.json").read_text(encoding="utf-8"))["templates"]


def make_dialogues(task: str, n_dialogues: int, n_turns: int, id_base: int = 11) -> list[Sample]:
    """Consecutive ids per dialogue, dialogues 500 ids apart (the hub layout); real hub templates,
    ruTiE-Image's text-only templates (no <image>) sent without an image as on the hub."""
    templates = hub_templates(task)
    samples = []
    for d in range(n_dialogues):
        for q in range(n_turns):
            template = templates[(d * n_turns + q) % len(templates)]
            samples.append(make_turn(task, id_base + 500 * d + q, template,
                                     with_media=("<image>" in template or "<audio>" in template)))
    return samples


def synthetic_card_dialogue(task: str) -> list[Sample]:
    """The two-turn dialogue from mera_card_examples.jsonl (`<task>/synthetic_dialog_2turns`)."""
    rows = [json.loads(line) for line in CARDS.read_text(encoding="utf-8").splitlines()]
    card = next(r for r in rows if r["example_id"] == f"{task}/synthetic_dialog_2turns")
    turns = []
    for k, doc in enumerate(card["dialog"]):
        inputs = {key: v for key, v in doc["inputs"].items() if not (isinstance(v, dict) and "kind" in v)}
        turns.append(Sample(task=task, split="test", index=k, id=doc["meta"]["id"], instruction=doc["instruction"],
                            inputs=inputs, media=_media_for(task, 1000 + k), meta=doc["meta"]))
    return turns


# --- the official chat, restated from the fork and MERA's code ---------------------------------------
def _media_parts(sample: Sample, options: RequestOptions) -> list[dict]:
    # update_user_content: doc_to_image / doc_to_audio, media parts appended after the text
    return [p for m in sample.media.values() for p in encode_media(m, audio_kind=options.audio_part)]


def _sort_multimedia_content_in_chat(messages: list[dict]) -> list[dict]:
    """lm_eval/api/task.py: every media part of the whole chat, in order, re-inserted where the
    `<image>`/`<audio>` tokens are (tokens removed, empty text and emptied messages dropped)."""
    media = {"image_url": [], "audio_url": []}
    for msg in messages:
        for item in msg["content"]:
            if item["type"] != "text":
                media[item["type"]].append(item)
    out = []
    for msg in messages:
        content = []
        for item in msg["content"]:
            if item["type"] == "text":
                for piece in (item["text"].replace("<image>", "\0<image>\0").replace("<audio>", "\0<audio>\0")
                                          .split("\0")):
                    if piece == "<image>":
                        content.append(media["image_url"].pop(0))
                    elif piece == "<audio>":
                        content.append(media["audio_url"].pop(0))
                    elif piece:
                        content.append({"type": "text", "text": piece})
        if content:
            out.append({"role": msg["role"], "content": content})
    assert not media["image_url"] and not media["audio_url"], "placeholder/media count mismatch"
    return out


def official_chat(turns: list[Sample], k: int, num_fewshot: int, letters: list[str],
                  options: RequestOptions) -> list[dict]:
    """What the harness sends for turn k of a complete dialogue (`turns[q]` has question_id q)."""
    chat: list[dict] = []
    if num_fewshot > 0 and k > 0:  # ruTiEContextFormer.get_chat_context, fewshot_as_multiturn branch
        for j in range(max(0, k - num_fewshot), k):  # sample(): docs[max(start, end - n):end]
            doc = turns[j]
            chat.append({"role": "user", "content": [{"type": "text", "text": doc.instruction}, *_media_parts(doc, options)]})
            chat.append({"role": "assistant", "content": [{"type": "text", "text": f"RUTIE_TARGET_{j}"}]})
    doc = turns[k]
    chat.append({"role": "user", "content": _media_parts(doc, options)})  # fewshot_context: media message first
    text = JINJA.from_string(OFFICIAL_DOC_TO_TEXT[doc.task]).render(instruction=doc.instruction, inputs=doc.inputs)
    chat.append({"role": "user", "content": [{"type": "text", "text": text}]})  # append_target_question
    chat = _sort_multimedia_content_in_chat(chat)
    for msg in chat:  # _update_request -> replace_targets, idx from question_id-1 down to 0
        for part in msg["content"]:
            if part["type"] == "text":
                for idx in range(k - 1, -1, -1):
                    part["text"] = part["text"].replace(f"RUTIE_TARGET_{idx}", letters[idx])
    return chat


def ours(turns: list[Sample], k: int, history: int, letters: list[str], options: RequestOptions,
         history_format="official") -> list[dict]:
    dialog = order_turns(turns)[0]
    past = [(t, letters[t.question_id]) for t in dialog if k - history <= t.question_id < k]
    return build_turn_messages(dialog[k], past, options, history_format)


# --- ordering and ids ------------------------------------------------------------------------------
def test_turns_are_ordered_by_the_official_id_arithmetic():
    samples = make_dialogues("ruTiE-Image", 3, 4, id_base=11)
    random.Random(3).shuffle(samples)
    dialogues = order_turns(samples)
    assert [[(t.dialog_id, t.question_id, t.sample.id) for t in d] for d in dialogues] == [
        [(d, q, 11 + 500 * d + q) for q in range(4)] for d in range(3)
    ]
    assert order_turns([]) == []


def test_ids_are_relative_to_the_smallest_id_as_in_process_docs():
    # process_docs: question_id = (id - min_id) % 500, dialog_id = (id - min_id) // 500 over the whole split.
    samples = [make_turn("ruTiE-Audio", i, "<audio>\nA. {option_a}") for i in (130, 131, 629, 630, 1130)]
    got = [(t.sample.id, t.dialog_id, t.question_id) for d in order_turns(samples) for t in d]
    assert got == [(130, 0, 0), (131, 0, 1), (629, 0, 499), (630, 1, 0), (1130, 2, 0)]


def test_submission_id_is_the_one_log_to_submission_rebuilds():
    # log_to_submission.py: question_id + 500 * dialog_id + 11 (meta.id is deleted by process_docs).
    hub_like = order_turns(make_dialogues("ruTiE-Image", 3, 2, id_base=11))
    assert [t.submission_id for d in hub_like for t in d] == [t.sample.id for d in hub_like for t in d]
    # Official quirk: the +11 is hard-coded, so a split whose smallest id is not 11 is shifted.
    shifted = order_turns(make_dialogues("ruTiE-Image", 2, 2, id_base=0))
    assert [t.submission_id for d in shifted for t in d] == [11, 12, 511, 512]


# --- the model's letter ------------------------------------------------------------------------------
@pytest.mark.parametrize(("reply", "letter"), [
    ("B", "B"),
    ("  C\n", "C"),
    ("ОТВЕТ D", "D"),
    ("Думаю, ОТВЕТ B.", "B"),
    ("A или B", "A"),  # first match (group_select=0)
    ("(C)", "C"),
    ("AB", "-1"),  # no word boundary inside
    ("ОТВЕТB", "-1"),  # Cyrillic letters are word characters for re's \b
    ("ответ: b", "-1"),  # case-sensitive
    ("ОТВЕТ А", "-1"),  # Cyrillic А is not Latin A
    ("E", "-1"),
    ("", "-1"),
    (None, "-1"),  # an errored turn: the harness would have stored the fallback too
])
def test_answer_letter_is_the_official_regex_with_its_fallback(reply, letter):
    assert answer_letter(reply) == letter


# --- the current turn's text ---------------------------------------------------------------------------
def test_current_text_formats_only_question_and_options_and_strips():
    s = make_turn("ruTiE-Image", 11, "  <context> {weird} {{x}} Картинка: <image>\n{question}\nA. {option_a}\nОтвет:\n  ",
                  question="Что?")
    assert current_text(s) == "<context> {weird} {{x}} Картинка: <image>\nЧто?\nA. A11\nОтвет:"
    assert current_text(s) == JINJA.from_string(OFFICIAL_DOC_TO_TEXT["ruTiE-Image"]).render(
        instruction=s.instruction, inputs=s.inputs)


def test_audio_current_text_leaves_question_literal_as_the_audio_yaml_does():
    s = make_turn("ruTiE-Audio", 11, "{question} <audio>\nA. {option_a}\nB. {option_b}")
    assert current_text(s) == "{question} <audio>\nA. A11\nB. B11"
    assert current_text(s) == JINJA.from_string(OFFICIAL_DOC_TO_TEXT["ruTiE-Audio"]).render(
        instruction=s.instruction, inputs=s.inputs)


def test_hub_templates_render_like_the_official_jinja():
    for task in ("ruTiE-Image", "ruTiE-Audio"):
        for i, template in enumerate(hub_templates(task)):
            s = make_turn(task, 11 + i, template)
            assert current_text(s) == JINJA.from_string(OFFICIAL_DOC_TO_TEXT[task]).render(
                instruction=s.instruction, inputs=s.inputs), (task, i)


# --- the chat for turn k -------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["ruTiE-Image", "ruTiE-Audio"])
def test_card_dialogue_turn_1_is_the_official_chat(task):
    turns = synthetic_card_dialogue(task)
    options = RequestOptions()
    letters = ["C", "-1"]
    got = ours(turns, 1, history=1, letters=letters, options=options)
    assert got == official_chat(turns, 1, 1, letters, options)
    # Spelled out: history user turn = the RAW instruction (placeholders unformatted) with its media
    # where its placeholder was, then the model's letter, then the formatted current turn.
    assert [m["role"] for m in got] == ["user", "assistant", "user"]
    history_text = "".join(p.get("text", "") for p in got[0]["content"])
    assert history_text == turns[0].instruction.replace(f"<{task.split('-')[1].lower()}>", "")
    assert "{option_a}" in history_text
    assert [p["type"] for p in got[0]["content"]] == ["text", f"{task.split('-')[1].lower()}_url", "text"]
    assert got[0]["content"][1] == _media_parts(turns[0], options)[0]
    assert got[1] == {"role": "assistant", "content": [{"type": "text", "text": "C"}]}
    assert "{option_a}" not in json.dumps(got[2], ensure_ascii=False)
    assert got[2]["content"][1] == _media_parts(turns[1], options)[0]
    assert ours(turns, 0, history=1, letters=letters, options=options) == official_chat(turns, 0, 1, letters, options)


@pytest.mark.parametrize("task", ["ruTiE-Image", "ruTiE-Audio"])
@pytest.mark.parametrize("history", [0, 1, 2, 5])
def test_every_turn_matches_the_official_chat(task, history):
    # 8 turns over the real hub templates: ruTiE-Image includes text-only turns (no <image>, no image).
    turns = make_dialogues(task, 1, 8)
    letters = ["A", "-1", "B", "D", "C", "A", "-1", "B"]
    options = RequestOptions()
    for k in range(len(turns)):
        assert ours(turns, k, history, letters, options) == official_chat(turns, k, history, letters, options), k


def test_history_media_follow_their_turns_in_order():
    turns = make_dialogues("ruTiE-Image", 1, 6)
    options = RequestOptions()
    messages = ours(turns, 5, history=5, letters=list("ABCDAB"), options=options)
    media_in_order = [p for m in messages for p in m["content"] if p["type"] == "image_url"]
    assert media_in_order == [p for t in turns for p in _media_parts(t, options)]
    assert [m["content"][0]["text"] for m in messages if m["role"] == "assistant"] == list("ABCDA")
    with_image = sum(1 for t in turns if t.media)
    assert media_counts(messages) == {"image": with_image}


def test_formatted_history_is_the_documented_correction():
    turns = synthetic_card_dialogue("ruTiE-Image")
    options = RequestOptions()
    got = ours(turns, 1, history=1, letters=["B", "A"], options=options, history_format="formatted")
    first_user_text = "".join(p.get("text", "") for p in got[0]["content"])
    assert "{question}" not in first_user_text and turns[0].inputs["question"] in first_user_text
    assert got[1:] == ours(turns, 1, history=1, letters=["B", "A"], options=options)[1:]


def test_system_prompt_comes_first_then_history():
    turns = make_dialogues("ruTiE-Audio", 1, 3)
    options = RequestOptions(system_prompt="Ты помощник.")
    messages = ours(turns, 2, history=2, letters=["A", "B", "C"], options=options)
    assert messages[0] == {"role": "system", "content": "Ты помощник."}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "user", "assistant", "user"]


def test_media_counts_and_limits():
    # With history H a turn carries up to H+1 media items: the server's limit must admit that.
    turns = make_dialogues("ruTiE-Audio", 1, 6)
    messages = ours(turns, 5, history=5, letters=list("ABCDAB"), options=RequestOptions())
    assert media_counts(messages) == {"audio": 6}
    assert over_limit({"audio": 6}, {"image": 6, "audio": 6}) is None
    assert over_limit({"audio": 6}, {"audio": 5}) == "6 audio items but the server admits 5 per request"
    input_audio = ours(turns, 2, history=2, letters=list("ABC"), options=RequestOptions(audio_part="input_audio"))
    assert media_counts(input_audio) == {"audio": 3}


# --- running dialogues (scripted client, real store) ----------------------------------------------------
class ScriptedClient:
    """Answers each turn with a scripted text; records requests and the order turns start and finish."""

    def __init__(self, answers: dict[str, str] | None = None, errors: dict[str, str] | None = None,
                 delay: float = 0.01) -> None:
        self.answers = answers or {}
        self.errors = errors or {}
        self.delay = delay
        self.requests: list[ChatRequest] = []
        self.events: list[tuple[str, str]] = []

    async def send(self, request: ChatRequest) -> Outcome:
        self.requests.append(request)
        self.events.append(("start", request.sample_key))
        await asyncio.sleep(self.delay)
        self.events.append(("end", request.sample_key))
        if request.sample_key in self.errors:
            return Outcome("invalid_request", http_status=400, error=self.errors[request.sample_key], attempts=1)
        return Outcome("ok", content=self.answers.get(request.sample_key, "не знаю"), finish_reason="stop", attempts=1)


def make_ctx(tmp_path: Path, client, task: str, **config) -> tuple[DispatchContext, RunStore]:
    run_config = RunConfig(endpoints=["http://127.0.0.1:9"], output=tmp_path, **config)
    store = RunStore.open(tmp_path, run_config.identity())
    runner = Runner(run_config, store, client)
    runner.progress[task] = TaskProgress()
    ctx = DispatchContext(client=client, store=store, options=run_config.options, config=run_config,
                          dispatch=runner.dispatch, record_error=runner.record_error, progress=runner.progress)
    return ctx, store


def assistant_letters(request: ChatRequest) -> list[str]:
    return [m["content"][0]["text"] for m in request.messages if m["role"] == "assistant"]


async def test_turns_run_in_order_dialogues_in_parallel_with_the_models_own_letters(tmp_path):
    samples = make_dialogues("ruTiE-Image", 3, 4)
    answers = {s.key: random.Random(s.id).choice(["ОТВЕТ A", "B.", "Думаю, C", "D", "не знаю"]) for s in samples}
    client = ScriptedClient(answers)
    ctx, store = make_ctx(tmp_path, client, "ruTiE-Image", rutie_history=2)
    await dialogue.run_task(get_task("ruTiE-Image"), list(reversed(samples)), ctx)

    # every turn once; within a dialogue each turn starts only after the previous one ended
    assert sorted(r.sample_key for r in client.requests) == sorted(s.key for s in samples)
    for d in order_turns(samples):
        positions = [(client.events.index(("start", t.sample.key)), client.events.index(("end", t.sample.key))) for t in d]
        assert all(prev_end < start for (_, prev_end), (start, _) in zip(positions, positions[1:], strict=False))
    # the three dialogues overlap: all first turns started before any of them finished
    first_ends = min(client.events.index(("end", d[0].sample.key)) for d in order_turns(samples))
    assert all(client.events.index(("start", d[0].sample.key)) < first_ends for d in order_turns(samples))

    by_key = {r.sample_key: r for r in client.requests}
    for d in order_turns(samples):
        for t in d:
            earlier = [p for p in d if t.question_id - 2 <= p.question_id < t.question_id]
            assert assistant_letters(by_key[t.sample.key]) == [answer_letter(store.get(p.sample.key).content)
                                                               for p in earlier]
    stored = list(store.replies(task="ruTiE-Image"))
    assert len(stored) == 12 and all(r.status == "ok" for r in stored)
    for r in stored:
        assert r.meta["submission_id"] == r.meta["question_id"] + 500 * r.meta["dialog_id"] + 11 == r.sample_id
        assert r.request_digest == by_key[r.sample_key].digest
    assert ctx.progress["ruTiE-Image"].done == 12


async def test_resume_continues_at_the_first_missing_turn_with_stored_answers(tmp_path):
    samples = make_dialogues("ruTiE-Audio", 2, 4)
    d0 = [t.sample for t in order_turns(samples)[0]]
    first = ScriptedClient({d0[0].key: "ОТВЕТ D", d0[1].key: "B"})
    ctx, store = make_ctx(tmp_path / "run", first, "ruTiE-Audio", rutie_history=3)
    # The killed run got as far as turns 0 and 1 of dialogue 0 (as if stopped there).
    await dialogue.run_task(get_task("ruTiE-Audio"), d0[:2], ctx)
    store.close()

    second = ScriptedClient()
    ctx, store = make_ctx(tmp_path / "run", second, "ruTiE-Audio", rutie_history=3)
    await dialogue.run_task(get_task("ruTiE-Audio"), samples, ctx)
    sent = [r.sample_key for r in second.requests]
    assert sorted(sent) == sorted(s.key for s in samples if s.key not in {d0[0].key, d0[1].key})
    assert ctx.progress["ruTiE-Audio"].skipped == 2
    by_key = {r.sample_key: r for r in second.requests}
    assert assistant_letters(by_key[d0[2].key]) == ["D", "B"]
    assert assistant_letters(by_key[d0[3].key]) == ["D", "B", "-1"]  # turn 2 answered "не знаю" this time
    assert len(list(store.replies(task="ruTiE-Audio"))) == 8


async def test_a_stored_error_is_the_fallback_in_history_and_retry_errors_resends_it(tmp_path):
    samples = make_dialogues("ruTiE-Image", 1, 3)
    keys = [s.key for s in samples]
    client = ScriptedClient({keys[0]: "A"}, errors={keys[1]: "some 400 the server gave"})
    ctx, store = make_ctx(tmp_path, client, "ruTiE-Image", rutie_history=2)
    await dialogue.run_task(get_task("ruTiE-Image"), samples, ctx)
    assert assistant_letters(client.requests[2]) == ["A", "-1"]
    assert store.get(keys[1]).error == "some 400 the server gave"  # unrelated 400s keep the server's message
    store.close()

    again = ScriptedClient({keys[1]: "C"})
    ctx, store = make_ctx(tmp_path, again, "ruTiE-Image", rutie_history=2, retry_errors=True)
    await dialogue.run_task(get_task("ruTiE-Image"), samples, ctx)
    assert [r.sample_key for r in again.requests] == [keys[1]]
    assert assistant_letters(again.requests[0]) == ["A"]
    assert store.get(keys[1]).status == "ok"


async def test_a_turn_over_the_media_limit_is_reported_not_sent(tmp_path):
    samples = make_dialogues("ruTiE-Audio", 1, 4)
    client = ScriptedClient({s.key: "A" for s in samples})
    ctx, store = make_ctx(tmp_path, client, "ruTiE-Audio", rutie_history=3, mm_limits={"audio": 2})
    await dialogue.run_task(get_task("ruTiE-Audio"), samples, ctx)
    assert [r.sample_key for r in client.requests] == [samples[0].key, samples[1].key]
    for q in (2, 3):
        reply = store.get(samples[q].key)
        assert reply.status == "not_sent" and reply.http_status is None
        assert f"ruTiE-Audio dialogue 0 turn {q} with {q} earlier turns" in reply.error
        assert f"{q + 1} audio items but the server admits 2 per request" in reply.error
        assert "shorter --rutie-history" in reply.error and reply.meta["submission_id"] == samples[q].id


@pytest.mark.parametrize("server_error", [
    # vLLM's context-length 400
    "This model's maximum context length is 10000 tokens. However, you requested 10400 tokens "
    "(400 in the messages, 10000 in the completion). Please reduce the length of the messages or completion.",
    # vLLM's own media limit and the guard's
    "At most 6 image(s) may be provided in one prompt.",
    "request has 7 image items; this server accepts at most 6 per request",
])
async def test_a_turn_the_server_refuses_as_too_big_names_the_turn_and_the_fix(tmp_path, server_error):
    samples = make_dialogues("ruTiE-Image", 1, 3)
    client = ScriptedClient({samples[0].key: "B"}, errors={samples[2].key: server_error})
    ctx, store = make_ctx(tmp_path, client, "ruTiE-Image", rutie_history=2)
    await dialogue.run_task(get_task("ruTiE-Image"), samples, ctx)
    reply = store.get(samples[2].key)
    assert reply.status == "invalid_request" and reply.http_status == 400
    assert reply.error.startswith("ruTiE-Image dialogue 0 turn 2 with 2 earlier turns does not fit")
    assert "shorter --rutie-history" in reply.error and reply.error.endswith(server_error)
    assert ctx.progress["ruTiE-Image"].done == 3 and ctx.progress["ruTiE-Image"].errors == 1


async def test_a_turn_that_cannot_be_built_is_recorded_with_its_turn(tmp_path):
    samples = make_dialogues("ruTiE-Image", 1, 2)
    broken = samples[1].model_copy(update={"instruction": "<image>\n<image>\n{question} {option_e}", "media": _media_for("ruTiE-Image", 1)})
    client = ScriptedClient()
    ctx, store = make_ctx(tmp_path, client, "ruTiE-Image", rutie_history=1)
    await dialogue.run_task(get_task("ruTiE-Image"), [samples[0], broken], ctx)
    assert len(client.requests) == 1
    reply = store.get(broken.key)
    assert reply.status == "not_sent" and "ruTiE-Image dialogue 0 turn 1" in reply.error
    assert "2 media placeholder(s)" in reply.error and "1 media item(s)" in reply.error
