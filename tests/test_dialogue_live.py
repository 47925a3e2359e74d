"""ruTiE dialogues against the real vLLM CPU dev server (tiny Gemma-4, guard on, API key set).

The tiny model's text is random, so its answers are constrained to one letter with vLLM's structured
outputs (`--extra-body`): the history then carries real, varying letters that the tests can follow.
Requests are observed by wrapping `ChatClient.send` (the real client still sends them).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluator.cli import build_parser
from evaluator.cli.run import config_from_args
from evaluator.client import ChatClient
from evaluator.data import DataSource, iter_samples
from evaluator.dialogue import answer_letter, order_turns
from evaluator.media import encode_media
from evaluator.registry import get_task
from evaluator.runner import run
from evaluator.schema import ChatRequest, Reply
from evaluator.store import RunStore
from tests.server_process import PROJECT_ROOT, child_env

pytestmark = pytest.mark.server

RUTIE = ("ruTiE-Image", "ruTiE-Audio")
LETTER_ONLY = {"structured_outputs": {"choice": ["A", "B", "C", "D"]}}
HISTORY = 2


def run_argv(server, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--endpoint", server.base_url, "--api-key", server.api_key, "--data-dir", str(data_dir),
            "--output", str(out), "--tasks", *RUTIE, "--rutie-history", str(HISTORY), "--max-tokens", "8",
            "--extra-body", json.dumps(LETTER_ONLY), "--concurrency", "4", *extra]


@pytest.fixture
def sent(monkeypatch) -> list[ChatRequest]:
    """Every request the client sends, in order (the real send still happens)."""
    requests: list[ChatRequest] = []
    original = ChatClient.send

    async def recording_send(self, request: ChatRequest):
        requests.append(request)
        return await original(self, request)

    monkeypatch.setattr(ChatClient, "send", recording_send)
    return requests


def run_in_process(argv: list[str]):
    return asyncio.run(run(config_from_args(build_parser().parse_args(argv))))


def media_parts(sample) -> list[dict]:
    return [p for m in sample.media.values() for p in encode_media(m)]


def check_history(requests: list[ChatRequest], store: RunStore, data_dir: Path) -> int:
    """Each sent turn's request holds, in order, the earlier turns' media and the model's own stored
    letters for them, then its own media. Returns how many turns were checked."""
    by_key = {r.sample_key: r for r in requests}
    checked = 0
    for task in RUTIE:
        samples = list(iter_samples(get_task(task), "test", DataSource(data_dir=data_dir)))
        for dialog in order_turns(samples):
            for turn in dialog:
                request = by_key.get(turn.sample.key)
                if request is None:
                    continue
                earlier = [t for t in dialog if turn.question_id - HISTORY <= t.question_id < turn.question_id]
                letters = [m["content"][0]["text"] for m in request.messages if m["role"] == "assistant"]
                stored = [store.get(t.sample.key) for t in earlier]
                assert letters == [answer_letter(r.content) for r in stored], turn.sample.key
                assert all(letter in "ABCD" for letter in letters)  # the constrained model's real answers
                users = [m for m in request.messages if m["role"] == "user"]
                assert len(users) == len(earlier) + 1
                for message, source in zip(users, [*(t.sample for t in earlier), turn.sample], strict=True):
                    assert [p for p in message["content"] if p["type"] != "text"] == media_parts(source)
                checked += 1
    return checked


def test_both_rutie_datasets_complete_with_the_models_own_answers_in_history(dev_server, sample_data_dir,
                                                                               tmp_path, sent):
    out = tmp_path / "run"
    summary = run_in_process(run_argv(dev_server, sample_data_dir, out))
    store = RunStore.open_existing(out)
    replies = {r.sample_key: r for r in store.replies()}
    expected = {e.sample_key for e in store.expected()}
    assert replies.keys() == expected and len(expected) == 16  # 2 datasets x 2 dialogues x 4 turns
    assert all(r.status == "ok" and r.content in {"A", "B", "C", "D"} for r in replies.values())
    assert summary.sent == len(sent) == 16 and sorted(r.sample_key for r in sent) == sorted(expected)
    assert check_history(sent, store, sample_data_dir) == 16
    histories = sorted(sum(m["role"] == "assistant" for m in r.messages) for r in sent)
    assert histories == [0] * 4 + [1] * 4 + [2] * 8
    for reply in replies.values():
        assert reply.request_digest == next(r.digest for r in sent if r.sample_key == reply.sample_key)
        meta = reply.meta
        assert meta["submission_id"] == meta["question_id"] + 500 * meta["dialog_id"] + 11 == reply.sample_id
    # The server counted the history: turn k's prompt holds turn k-1's (and its media) plus its own.
    for task in RUTIE:
        for d in (0, 1):
            turns = sorted((r for r in replies.values() if r.task == task and r.meta["dialog_id"] == d),
                           key=lambda r: r.meta["question_id"])
            assert turns[1].prompt_tokens > turns[0].prompt_tokens
            assert turns[2].prompt_tokens > turns[1].prompt_tokens


def stored_rows(run_dir: Path) -> dict[str, Reply]:
    try:
        with sqlite3.connect(run_dir / "store.sqlite", timeout=5) as conn:
            return {k: Reply.model_validate_json(b) for k, b in conn.execute("SELECT sample_key, body FROM replies")}
    except sqlite3.OperationalError:
        return {}


def test_killed_mid_dialogue_resumes_at_the_first_missing_turn_with_stored_answers(dev_server, sample_data_dir,
                                                                                   tmp_path, sent):
    out = tmp_path / "run"
    argv = run_argv(dev_server, sample_data_dir, out)
    log = open(tmp_path / "killed-run.log", "w")  # a file, not a pipe: the progress bar never blocks on it
    proc = subprocess.Popen([sys.executable, "-m", "evaluator.cli", *argv], cwd=PROJECT_ROOT, env=child_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while len(stored_rows(out)) < 5:
            assert proc.poll() is None, (tmp_path / "killed-run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no ruTiE turns stored in 300 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        log.close()
    before = stored_rows(out)
    assert 5 <= len(before) < 16
    # stopped inside a dialogue: some dialogue has its first turn stored and a later one missing
    turns = {(r.task, r.meta["dialog_id"], r.meta["question_id"]) for r in before.values()}
    assert any((t, d, 0) in turns and (t, d, 3) not in turns for t in RUTIE for d in (0, 1))

    run_in_process(argv)
    store = RunStore.open_existing(out)
    after = {r.sample_key: r for r in store.replies()}
    assert len(after) == 16 and all(r.status == "ok" for r in after.values())
    resent = [r.sample_key for r in sent]
    assert len(resent) == len(set(resent)) == 16 - len(before)  # each missing turn once, nothing stored again
    assert not set(resent) & before.keys()
    for key, reply in before.items():  # stored answers are kept, not replaced
        assert after[key].content == reply.content and after[key].created_at == reply.created_at
    # resumed turns' histories hold the answers stored before the kill (and those given since)
    assert check_history(sent, store, sample_data_dir) == 16 - len(before)
    position = {k: (r.task, r.meta["dialog_id"], r.meta["question_id"]) for k, r in after.items()}
    continued = [k for k in resent if position[k][2] > 0 and (*position[k][:2], position[k][2] - 1) in turns]
    assert continued, "no resumed turn continued a dialogue from an answer stored before the kill"


def test_a_history_over_the_servers_media_limit_is_reported_with_turn_and_fix(dev_server, tmp_path, sent):
    # 8-turn dialogues, history 7: turn q carries min(q, 7) + 1 clips; the dev server admits 6 per request.
    # The client is told a higher limit, so the server's own refusal (the guard's 400) is what gets reported.
    from evaluator.sample_data import write_sample_data

    data = write_sample_data(tmp_path / "data", per_split=8, tasks=["ruTiE-Audio"])
    out = tmp_path / "run"
    argv = ["run", "--endpoint", dev_server.base_url, "--api-key", dev_server.api_key, "--data-dir", str(data),
            "--output", str(out), "--tasks", "ruTiE-Audio", "--rutie-history", "7", "--max-tokens", "8",
            "--extra-body", json.dumps(LETTER_ONLY), "--concurrency", "2", "--mm-limits", '{"audio": 20}']
    run_in_process(argv)
    replies = {(r.meta["dialog_id"], r.meta["question_id"]): r for r in RunStore.open_existing(out).replies()}
    assert len(replies) == 16
    for (d, q), reply in sorted(replies.items()):
        if q <= 5:
            assert reply.status == "ok", reply.error
            continue
        assert reply.status == "invalid_request" and reply.http_status == 400
        assert reply.error.startswith(f"ruTiE-Audio dialogue {d} turn {q} with {q} earlier turns does not fit")
        assert "shorter --rutie-history" in reply.error and "accepts at most 6" in reply.error
    # the refused turn is the fallback in the next turn's history
    turn7 = next(r for r in sent if r.sample_key == replies[(0, 7)].sample_key)
    assert [m["content"][0]["text"] for m in turn7.messages if m["role"] == "assistant"][-1] == "-1"


def test_a_turn_over_the_context_length_is_reported_with_turn_and_fix(dev_server, sample_data_dir, tmp_path):
    # A system prompt alone longer than the dev server's max_model_len (10000): vLLM's own 400 for every turn.
    out = tmp_path / "run"
    argv = ["run", "--endpoint", dev_server.base_url, "--api-key", dev_server.api_key, "--data-dir",
            str(sample_data_dir), "--output", str(out), "--tasks", "ruTiE-Image", "--limit", "2",
            "--rutie-history", "2", "--max-tokens", "8", "--system-prompt", "слово " * 12000]
    run_in_process(argv)
    replies = sorted(RunStore.open_existing(out).replies(), key=lambda r: r.meta["question_id"])
    assert [(r.meta["dialog_id"], r.meta["question_id"]) for r in replies] == [(0, 0), (0, 1)]
    for q, reply in enumerate(replies):
        assert reply.status == "invalid_request" and reply.http_status == 400
        assert reply.error.startswith(f"ruTiE-Image dialogue 0 turn {q} with {q} earlier turns does not fit")
        assert "shorter --rutie-history" in reply.error and "maximum context length" in reply.error
