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

The split is never held whole: a first pass reads only the ids (`RowSource.index`, parquet column
projection), then each dialogue reads its turns' rows in order (`RowSource.rows`), and only the turns
inside the history window (with their encoded media) stay in memory: at most `history + 1` turns per
dialogue in flight, whatever the split's size. Finished turns are read again only when a pending
turn replays them.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from evaluator.data import RowRef
from evaluator.limits import message_counts, over_limit
from evaluator.registry import TaskSpec, get_task
from evaluator.requests import RequestOptions, SampleError, generation_for, request_digest, user_content
from evaluator.schema import ChatRequest, Reply, Sample
from evaluator.store import ExpectedSample
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
class TurnRef:
    """A turn's place in its dialogue, by the official id arithmetic; its row is read only when needed."""

    row: RowRef
    question_id: int
    dialog_id: int

    @property
    def submission_id(self) -> int:
        return self.question_id + DIALOG_LEN * self.dialog_id + SUBMISSION_ID_OFFSET


@dataclass(frozen=True)
class Turn:
    sample: Sample
    question_id: int
    dialog_id: int

    @property
    def submission_id(self) -> int:
        return self.question_id + DIALOG_LEN * self.dialog_id + SUBMISSION_ID_OFFSET


class RowSource(Protocol):
    """Where a dialogue task's rows come from: `evaluator.data.SplitRows` (a split, streamed) or `SampleRows`."""

    def index(self) -> list[RowRef]: ...

    def rows(self, positions: list[int]) -> Iterator[Sample]: ...


class SampleRows:
    """Samples already in memory as a row source (tests, small lists)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def index(self) -> list[RowRef]:
        return [RowRef(i, s.task, s.domain, s.split, s.id) for i, s in enumerate(self.samples)]

    def rows(self, positions: list[int]) -> Iterator[Sample]:
        return (self.samples[p] for p in positions)


def order_refs(refs: list[RowRef]) -> list[list[TurnRef]]:
    """Dialogues (each a list of turns in order), by the official id arithmetic."""
    if not refs:
        return []
    min_id = min(r.id for r in refs)
    dialogues: dict[int, list[TurnRef]] = {}
    for r in refs:
        q, d = (r.id - min_id) % DIALOG_LEN, (r.id - min_id) // DIALOG_LEN
        dialogues.setdefault(d, []).append(TurnRef(r, q, d))
    return [sorted(turns, key=lambda t: t.question_id) for _, turns in sorted(dialogues.items())]


def order_turns(samples: list[Sample]) -> list[list[Turn]]:
    """`order_refs` for samples in memory."""
    rows = SampleRows(samples)
    return [[Turn(rows.samples[t.row.position], t.question_id, t.dialog_id) for t in d]
            for d in order_refs(rows.index())]


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


media_counts = message_counts  # the media items per kind in built messages (evaluator.limits)


def _needed(turns: list[TurnRef], pending: set[str], history_len: int) -> list[TurnRef]:
    """The turns whose rows must be read: the pending ones and the finished ones a pending turn replays."""
    window = {q for t in turns if t.row.key in pending for q in range(t.question_id - history_len, t.question_id + 1)}
    return [t for t in turns if t.question_id in window]


async def run_dialogue(spec: TaskSpec, turns: list[TurnRef], source: RowSource, ctx: DispatchContext) -> None:
    history_len = ctx.config.rutie_history
    fmt: HistoryFormat = ctx.config.rutie_history_format
    answers: dict[int, str] = {}  # question_id -> the model's letter
    answered_at: dict[int, float] = {}  # question_id -> when its stored reply was written
    done = ctx.store.done_keys(include_errors=not ctx.config.retry_errors)
    stored: dict[str, Reply | None] = {}
    for ref in turns:  # the stored letters first: a later turn may replay a turn that is not read again
        if ref.row.key in done:
            reply = stored[ref.row.key] = ctx.store.get(ref.row.key)
            answers[ref.question_id] = answer_letter(reply.content if reply and reply.status == "ok" else None)
            answered_at[ref.question_id] = (reply.created_at or 0.0) if reply else 0.0
    pending = {t.row.key for t in turns} - done
    # The resume check rebuilds every stored turn's request, so then every row is read (one at a time);
    # without it only the pending turns and the finished ones they replay are.
    needed = list(turns) if ctx.check_stored is not None else _needed(turns, pending, history_len)
    read = {t.row.key for t in needed}
    for key in stored.keys() - read:  # kept as stored, never read
        ctx.progress[spec.name].skipped += 1
        ctx.progress[spec.name].errors += bool(stored[key] and stored[key].status != "ok")  # kept failures count
    rows = source.rows([t.row.position for t in needed])
    window: dict[int, Turn] = {}  # question_id -> the loaded turns later turns may still replay
    encoded: dict[str, list[dict[str, Any]]] = {}  # their user parts, encoded once
    for ref in needed:
        sample = await asyncio.to_thread(next, rows)
        turn = Turn(sample, ref.question_id, ref.dialog_id)
        history = [(window[q], answers.get(q, FALLBACK)) for q in sorted(window)
                   if turn.question_id - history_len <= q < turn.question_id]
        in_window = {p.sample.key for p, _ in history}
        encoded = {k: v for k, v in encoded.items() if k in in_window}  # keep only what later turns replay
        if sample.key in pending or not await _stored_turn_stands(spec, turn, history, stored.get(sample.key),
                                                                  answered_at, ctx, fmt, encoded):
            reply = await _send_turn(spec, turn, history, ctx, fmt, encoded)
            answers[turn.question_id] = answer_letter(reply.content if reply.status == "ok" else None)
            answered_at[turn.question_id] = float("inf")  # answered now: later stored turns saw another history
        window[turn.question_id] = turn
        for q in [q for q in window if q <= turn.question_id - history_len]:  # out of every later window
            del window[q]


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
    return ctx.check_stored(turn.sample, request_digest(messages, generation_for(spec, ctx.options.params)))


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
    problem = over_limit(message_counts(messages), ctx.config.mm_limits)
    if problem:
        return ctx.record_error(sample, f"{where} with {len(history)} earlier turns: {problem}; {fix} "
                                        "or raise the server's --limit-mm-per-prompt")
    params = generation_for(spec, ctx.options.params)
    request = ChatRequest(sample_key=sample.key, modality=spec.modality, messages=messages, params=params,
                          digest=request_digest(messages, params))
    reply = await ctx.dispatch(sample, request)
    if reply.status == "invalid_request" and reply.error and any(s in reply.error for s in CONTEXT_ERRORS):
        reply = reply.model_copy(update={"error": f"{where} with {len(history)} earlier turns does not fit the "
                                                  f"server's context or media limit ({fix}): {reply.error}"})
        ctx.store.record(reply)
    return reply


async def run_task(spec: TaskSpec, source: RowSource | Sequence[Sample], ctx: DispatchContext) -> None:
    """All dialogues of one ruTiE task, in parallel with each other, each reading its own turns in order."""
    if isinstance(source, Sequence):
        source = SampleRows(source)
    refs = await asyncio.to_thread(source.index)
    ctx.store.expect([ExpectedSample(r.key, r.task, r.domain, r.split, r.id) for r in refs])
    await gather_all(run_dialogue(spec, turns, source, ctx) for turns in order_refs(refs))
    if ctx.on_progress:
        ctx.on_progress(spec.name, ctx.progress[spec.name])
