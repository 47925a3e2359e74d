"""ruTiE-Image and ruTiE-Audio: dialogues whose prompts carry earlier turns and the model's own answers.

As the official code does it (MERA_MULTIMODAL @0f32158 `multimodal_tasks/rutie_*/utils.py`,
`custom_context_formers.py`, run with `--fewshot_as_multiturn --pass_multimodal_args_to_chat_history`):

- ids: `question_id = (meta.id - min_id) % 500`, `dialog_id = (meta.id - min_id) // 500`; turns are
  ordered by (dialog_id, question_id);
- turn k's request replays the previous `history` turns of its dialogue (the official `num_fewshot`)
  as user/assistant pairs, each user turn with its media, then the current turn;
- history user text is the earlier turn's *raw* instruction (placeholders like `{question}` left
  unformatted: the official `get_chat_context` uses `document["instruction"]`); `history_format=
  "formatted"` fills them in instead (our documented correction, off by default);
- the current turn's text is `doc_to_text`: the instruction with only `{question}` and
  `{option_a..d}` filled in (ruTiE-Audio: only `{option_a..d}`), then stripped;
- assistant turns are the model's own earlier answers reduced to a letter by the official regex
  `\\b([A-D])\\b` (first match) with fallback `-1`;
- submission id: `question_id + 500 * dialog_id + 11` (`scripts/log_to_submission.py`).

Turns of one dialogue run strictly in order; dialogues run in parallel with each other and with the
rest of the run. A resumed run takes earlier answers from the store and continues at the first
missing turn.

Where we differ from, or pin down, the official code (checked against the fork
`artemorloff/lm-evaluation-harness@adding_strict_chat_format_support`, tests/test_dialogue.py):
- history is chosen by question id (`q - history <= p < q`, same dialogue); the official sampler
  slices the sorted split by position (`docs[max(500*d, 500*d + q - n) : 500*d + q]`), which is the
  same for complete 500-turn dialogues (the hub's) and wrong for shorter ones (our sample data);
- `min_id` is taken over the samples being run (the official one over the whole split: the same
  unless `--limit` drops the smallest id); the `+ 11` of the submission id is hard-coded upstream,
  so it equals `meta.id` only when the split's smallest id is 11, as on the hub;
- a turn that errored (or was refused as too big) counts as the fallback `-1` in later histories;
  `--retry-errors` re-sends it but does not re-run later turns that already have answers;
- the official storage is one dict shared by both ruTiE tasks and cleared at question 499; keeping
  the answers per dialogue gives the same prompts for complete dialogues.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from evaluator.registry import TaskSpec, get_task
from evaluator.requests import RequestOptions, SampleError, request_digest, user_content
from evaluator.schema import ChatRequest, Reply, Sample
from evaluator.structured import gather_all

if TYPE_CHECKING:
    from evaluator.runner import DispatchContext

DIALOG_LEN = 500  # RUTIE_END_QUESTION_ID + 1
SUBMISSION_ID_OFFSET = 11
FALLBACK = "-1"
LETTER = re.compile(r"\b([A-D])\b")
CURRENT_FIELDS = ("question", "option_a", "option_b", "option_c", "option_d")
# rutie_audio_gen.yaml's doc_to_text restores only {option_a..d}: a `{question}` stays literal there.
CURRENT_FIELDS_AUDIO = ("option_a", "option_b", "option_c", "option_d")
# A 400 for a turn whose history does not fit: vLLM's context-length messages, vLLM's media limit
# ("At most N image(s) may be provided in one prompt.") and the guard's ("... accepts at most N per request").
CONTEXT_ERRORS = ("maximum context length", "max_model_len", "too long", "exceeds", "may be provided in one",
                  "accepts at most")

HistoryFormat = Literal["official", "formatted"]


@dataclass(frozen=True)
class Turn:
    sample: Sample
    question_id: int
    dialog_id: int

    @property
    def submission_id(self) -> int:
        return self.question_id + DIALOG_LEN * self.dialog_id + SUBMISSION_ID_OFFSET


def order_turns(samples: list[Sample]) -> list[list[Turn]]:
    """Dialogues (each a list of turns in order), by the official id arithmetic."""
    if not samples:
        return []
    min_id = min(s.id for s in samples)
    dialogues: dict[int, list[Turn]] = {}
    for s in samples:
        q, d = (s.id - min_id) % DIALOG_LEN, (s.id - min_id) // DIALOG_LEN
        dialogues.setdefault(d, []).append(Turn(s, q, d))
    return [sorted(turns, key=lambda t: t.question_id) for _, turns in sorted(dialogues.items())]


def answer_letter(reply_text: str | None) -> str:
    """The official `_update_storage`: strip, first `\\b([A-D])\\b` match, else "-1"."""
    if not reply_text:
        return FALLBACK
    match = LETTER.search(reply_text.strip())
    return match.group(1) if match else FALLBACK


def current_text(sample: Sample) -> str:
    """The official Jinja `doc_to_text`: only question/options are filled in; other braces stay literal."""
    text = sample.instruction.replace("{", "{{").replace("}", "}}")
    for name in CURRENT_FIELDS_AUDIO if get_task(sample.task).modality == "audio" else CURRENT_FIELDS:
        text = text.replace("{{" + name + "}}", "{" + name + "}")
    try:
        return text.format(**sample.inputs).strip()
    except (KeyError, IndexError) as exc:
        raise SampleError(sample.key, f"instruction needs input {exc} which the sample lacks") from None


def history_text(sample: Sample, history_format: HistoryFormat) -> str:
    return sample.instruction if history_format == "official" else current_text(sample)


def build_turn_messages(turn: Turn, history: list[tuple[Turn, str]], options: RequestOptions,
                        history_format: HistoryFormat = "official",
                        encoded: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """`encoded` caches each earlier turn's user parts across the turns of one dialogue, so a turn's
    media are base64-encoded once, not once per later turn that replays it."""
    encoded = {} if encoded is None else encoded
    messages: list[dict[str, Any]] = []
    if options.system_prompt:
        messages.append({"role": "system", "content": options.system_prompt})
    for past, letter in history:
        if past.sample.key not in encoded:
            encoded[past.sample.key] = user_content(past.sample, options, history_text(past.sample, history_format))
        messages.append({"role": "user", "content": encoded[past.sample.key]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": letter}]})
    messages.append({"role": "user", "content": user_content(turn.sample, options, current_text(turn.sample))})
    return messages


def media_counts(messages: list[dict[str, Any]]) -> dict[str, int]:
    kinds = {"image_url": "image", "audio_url": "audio", "input_audio": "audio", "video_url": "video"}
    counts: dict[str, int] = {}
    for message in messages:
        if isinstance(message["content"], list):
            for part in message["content"]:
                kind = kinds.get(part.get("type"))
                if kind:
                    counts[kind] = counts.get(kind, 0) + 1
    return counts


def over_limit(counts: dict[str, int], limits: dict[str, int]) -> str | None:
    for kind, n in counts.items():
        if kind in limits and n > limits[kind]:
            return f"{n} {kind} items but the server admits {limits[kind]} per request"
    return None


async def run_dialogue(spec: TaskSpec, turns: list[Turn], ctx: DispatchContext) -> None:
    history_len = ctx.config.rutie_history
    fmt: HistoryFormat = ctx.config.rutie_history_format
    answers: dict[int, str] = {}  # question_id -> the model's letter
    answered_at: dict[int, float] = {}  # question_id -> when its stored reply was written
    encoded: dict[str, list[dict[str, Any]]] = {}  # earlier turns' user parts, encoded once
    done = ctx.store.done_keys(include_errors=not ctx.config.retry_errors)
    for turn in turns:
        sample = turn.sample
        history = [(p, answers.get(p.question_id, FALLBACK)) for p in turns
                   if turn.question_id - history_len <= p.question_id < turn.question_id]
        in_window = {p.sample.key for p, _ in history}
        encoded = {k: v for k, v in encoded.items() if k in in_window}  # keep only what later turns replay
        if sample.key in done:
            stored = ctx.store.get(sample.key)
            if await _stored_turn_stands(spec, turn, history, stored, answered_at, ctx, fmt, encoded):
                answers[turn.question_id] = answer_letter(stored.content if stored and stored.status == "ok" else None)
                answered_at[turn.question_id] = (stored.created_at or 0.0) if stored else 0.0
                continue
        reply = await _send_turn(spec, turn, history, ctx, fmt, encoded)
        answers[turn.question_id] = answer_letter(reply.content if reply.status == "ok" else None)
        answered_at[turn.question_id] = float("inf")  # answered now: later stored turns saw another history


async def _stored_turn_stands(spec: TaskSpec, turn: Turn, history: list[tuple[Turn, str]], stored: Reply | None,
                              answered_at: dict[int, float], ctx: DispatchContext, fmt: HistoryFormat,
                              encoded: dict[str, list[dict[str, Any]]]) -> bool:
    """A stored turn is kept unless the request it would get now differs (resume check, as for other tasks).
    Only checked when its history is the one it was sent with: a turn re-sent later (--retry-errors) gives
    the turns after it a new letter in their history, which is no change of the data or the builder."""
    if stored is None:
        return True
    history_changed = any(answered_at.get(p.question_id, 0.0) > (stored.created_at or 0.0) for p, _ in history)
    if ctx.check_stored is None or history_changed:
        ctx.progress[spec.name].skipped += 1
        ctx.progress[spec.name].errors += stored.status != "ok"  # kept failures still count
        return True
    try:
        messages = await asyncio.to_thread(build_turn_messages, turn, history, ctx.options, fmt, encoded)
    except SampleError as exc:
        return ctx.check_stored(turn.sample, None, exc.problem)
    return ctx.check_stored(turn.sample, request_digest(messages, ctx.options.params))


async def _send_turn(spec: TaskSpec, turn: Turn, history: list[tuple[Turn, str]], ctx: DispatchContext,
                     fmt: HistoryFormat, encoded: dict[str, list[dict[str, Any]]]) -> Reply:
    sample = turn.sample.model_copy(update={"meta": {**turn.sample.meta, "question_id": turn.question_id,
                                                     "dialog_id": turn.dialog_id, "submission_id": turn.submission_id}})
    where = f"{spec.name} dialogue {turn.dialog_id} turn {turn.question_id}"
    fix = "run with a shorter --rutie-history"
    try:
        messages = await asyncio.to_thread(build_turn_messages, turn, history, ctx.options, fmt, encoded)
    except SampleError as exc:
        return ctx.record_error(sample, f"{where}: {exc.problem}")
    problem = over_limit(media_counts(messages), ctx.config.mm_limits)
    if problem:
        return ctx.record_error(sample, f"{where} with {len(history)} earlier turns: {problem}; {fix} "
                                        "or raise the server's --limit-mm-per-prompt")
    request = ChatRequest(sample_key=sample.key, modality=spec.modality, messages=messages,
                          params=ctx.options.params, digest=request_digest(messages, ctx.options.params))
    reply = await ctx.dispatch(sample, request)
    if reply.status == "invalid_request" and reply.error and any(s in reply.error for s in CONTEXT_ERRORS):
        reply = reply.model_copy(update={"error": f"{where} with {len(history)} earlier turns does not fit the "
                                                  f"server's context or media limit ({fix}): {reply.error}"})
        ctx.store.record(reply)
    return reply


async def run_task(spec: TaskSpec, samples: list[Sample], ctx: DispatchContext) -> None:
    """All dialogues of one ruTiE task, in parallel with each other."""
    await gather_all(run_dialogue(spec, turns, ctx) for turns in order_turns(samples))
    if ctx.on_progress:
        ctx.on_progress(spec.name, ctx.progress[spec.name])
