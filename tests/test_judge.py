"""JudgeScore: the MERA algorithm against fakes (fault injection) and end to end on real vLLM CPU."""

from __future__ import annotations

import json

import httpx
import pytest

from evaluator.http_policy import RetryPolicy
from evaluator.judge import TOKEN_LIMIT, JudgeClient, JudgeConfig, JudgeItem
from tests.fake_clock import FakeClock

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=2.0, max_downtime_s=5)


class FakeJudge:
    """A loopback stand-in for vLLM's /classify, /tokenize, /detokenize: one token per character.

    The label is 1 iff the input ends with the gold letter "B" after the last separator."""

    def __init__(self, fail_first: int = 0, status: int = 503) -> None:
        self.fail_first, self.status = fail_first, status
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append((request.url.path, body))
        if self.fail_first:
            self.fail_first -= 1
            return httpx.Response(self.status, json={"error": {"message": "busy"}})
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"tokens": [ord(c) for c in body["prompt"]]})
        if request.url.path == "/detokenize":
            return httpx.Response(200, json={"prompt": "".join(chr(t) for t in body["tokens"])})
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"probs": [0.2, 0.8] if text.split("[SEP]")[-1].strip() == "B" else [0.9, 0.1]} for text in inputs]
        return httpx.Response(200, json={"data": data})


def client_for(fake: FakeJudge) -> JudgeClient:
    return JudgeClient(JudgeConfig(url="http://judge.test/v1", model="judge", retry=FAST_RETRY),
                       transport=httpx.MockTransport(fake), clock=FakeClock())  # backoff without sleeping


async def test_input_is_question_sep_gold_sep_prediction_plus_answer_variant():
    fake = FakeJudge()
    async with client_for(fake) as judge:
        verdict = await judge.judge(JudgeItem("k", "Вопрос?", "B", "РАССУЖДЕНИЕ: похоже на B.\nОТВЕТ B"))
    path, body = fake.calls[-1]
    assert path == "/classify" and body["model"] == "judge" and body["truncate_prompt_tokens"] == 8192
    assert body["input"] == ["Вопрос?[SEP]B[SEP]РАССУЖДЕНИЕ: похоже на B.\nОТВЕТ B", "Вопрос?[SEP]B[SEP]B"]
    # the full reply is judged wrong, the text after ОТВЕТ right: the sample takes the max
    assert verdict.labels == [0, 1] and verdict.score == 1


async def test_without_marker_the_stripped_prediction_is_the_second_variant_and_duplicates_go_once():
    fake = FakeJudge()
    async with client_for(fake) as judge:
        inputs = await judge.judge_inputs("Q", "B", " A ")
        same = await judge.judge_inputs("Q", "B", "A")
    assert inputs == ["Q[SEP]B[SEP] A ", "Q[SEP]B[SEP]A"]
    assert same == ["Q[SEP]B[SEP]A"]


async def test_long_inputs_become_head_and_tail_token_windows():
    fake = FakeJudge()
    question = "й" * (TOKEN_LIMIT + 100)
    async with client_for(fake) as judge:
        inputs = await judge.judge_inputs(question, "B", "ОТВЕТ B")
    full = question + "[SEP]B[SEP]ОТВЕТ B"
    split = question + "[SEP]B[SEP]B"
    # the two heads are the same question prefix: sent once
    assert full[:TOKEN_LIMIT] == split[:TOKEN_LIMIT]
    assert inputs == [full[:TOKEN_LIMIT], full[-TOKEN_LIMIT:], split[-TOKEN_LIMIT:]]
    assert {p for p, _ in fake.calls} == {"/tokenize", "/detokenize"}


async def test_list_gold_is_stringified_as_the_official_code_does():
    async with client_for(FakeJudge()) as judge:
        assert (await judge.judge_inputs("Q", ["Да", "да"], "Да"))[0] == "Q[SEP]['Да', 'да'][SEP]Да"


async def test_transient_errors_are_retried():
    fake = FakeJudge(fail_first=2, status=503)
    async with client_for(fake) as judge:
        verdict = await judge.judge(JudgeItem("k", "Q", "B", "B"))
    assert verdict.score == 1 and judge.retries == 2


@pytest.mark.parametrize(("fail_first", "status"), [(10, 503), (1, 400)])
async def test_a_judge_failure_leaves_the_sample_unscored_never_zero(fail_first, status):
    fake = FakeJudge(fail_first=fail_first, status=status)
    async with client_for(fake) as judge:
        verdict = await judge.judge(JudgeItem("k", "Q", "B", "B"))
    assert verdict.score is None and f"HTTP {status}" in verdict.error
    assert len(fake.calls) == (FAST_RETRY.max_attempts if status == 503 else 1)


@pytest.mark.judge
@pytest.mark.server
async def test_judge_end_to_end_on_vllm_cpu(judge_server):
    """The real /classify, /tokenize and /detokenize routes of vLLM serving the tiny classifier."""
    config = JudgeConfig(url=judge_server.base_url, model=judge_server.model, api_key=judge_server.api_key,
                         concurrency=4)
    items = [
        JudgeItem("short", "Изображение: Сколько котов? Ответ:", "2", "РАССУЖДЕНИЕ: вижу двух.\nОТВЕТ 2"),
        JudgeItem("list", "Вопрос?", ["Да", "да"], "Да"),
        JudgeItem("long", "слово " * 3000, "B", "ОТВЕТ B"),  # > 7995 tokens: head and tail windows
    ]
    async with JudgeClient(config) as judge:
        tokens = await judge.tokenize("Привет[SEP]B")
        assert tokens[0] != tokens[-1] and len(tokens) >= 4  # [CLS] ... [SEP] with special tokens added
        verdicts = await judge.judge_all(items)
    by_key = {v.key: v for v in verdicts}
    for verdict in verdicts:
        assert verdict.error is None, verdict.error
        assert verdict.score in (0, 1) and all(label in (0, 1) for label in verdict.labels)
        assert verdict.score == max([0, *verdict.labels])
    assert by_key["short"].inputs == 2
    assert by_key["long"].inputs == 3  # one shared head, the tails of the full and the after-ОТВЕТ input


@pytest.mark.judge
@pytest.mark.server
def test_score_cli_with_the_judge_on_vllm_cpu(judge_server, tmp_path):
    """`mera-eval score --judge-url`: JudgeScore present wherever gold is, absent where it is hidden."""
    from evaluator.cli import main
    from tests.scoring_fixtures import make_run

    run = make_run(tmp_path / "run", per_task=2)
    assert main(["score", str(run), "--judge-url", judge_server.base_url + "/v1", "--judge-model", judge_server.model,
                 "--judge-api-key", judge_server.api_key]) == 0
    data = json.loads((run / "results.json").read_text())
    assert data["judge_model"] == judge_server.model
    shots = data["splits"]["shots"]["tasks"]
    assert 0.0 <= shots["ruCLEVR"]["metrics"]["judge_score"] <= 1.0
    assert 0.0 <= shots["ruHHH-Video"]["metrics"]["group_judge_score"] <= 1.0
    assert "judge_score" not in shots["ruSLUn"]["metrics"]  # ruSLUn: Intent EM + Slot F1 only
    assert all(t["judge_unscored"] == 0 and not t["missing_metrics"] for t in shots.values())
    assert data["splits"]["test"]["tasks"]["LabTabVQA"]["score"] is None
