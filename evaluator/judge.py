"""JudgeScore: MERA's answer judge (a 2-label sequence classifier) served by vLLM's `/classify`.

Algorithm, as `multimodal_tasks/custom_metrics.py` (MERA_MULTIMODAL @3380006) defines it:
* input = question + sep + str(gold) + sep + str(prediction) (no judge prompt);
* if it tokenizes to more than 7995 tokens (MAX_LENGTH 8000 - OFFSET 5, special tokens included),
  two inputs are sent instead: the decoded first 7995 tokens and the decoded last 7995;
* a second input (same truncation rule) uses `prediction.split("ОТВЕТ")[-1].strip()` when that is
  non-empty — so without `ОТВЕТ` it is the stripped prediction;
* each input's label = argmax(probs); the sample's score = max([0] + labels); the task = mean.

Where we differ, on purpose:
* A judge request that still fails after the retry policy (the evaluator's one `RetryPolicy`, through
  the same call loop and readiness rules as the chat client, `evaluator.endpoints`) makes the sample
  *unscored* and reported, never 0 (the official code scores any exception as 0). What no retry can
  fix (a wrong key or URL, TLS against plain HTTP, a judge that never comes up) stops scoring with
  one line instead of leaving every sample unscored with the same error.
* The official code posts the body form-encoded (`requests.post(url, dict)`), which vLLM rejects;
  we send JSON, which is what the vLLM route accepts.
* Identical inputs are sent once (max over duplicates is the same), all inputs of a sample in one
  `/classify` call (vLLM takes a list).

Tokenizer: the judge server's own, through vLLM's `/tokenize` and `/detokenize` routes, so no model
files or `transformers` are needed on the evaluator side. Truncation decodes with the server's
`detokenize`, as the official code decodes with `tokenizer.decode` (special tokens kept). Texts whose
UTF-8 byte length (+ a margin for the special tokens added) cannot exceed 7995 tokens skip the
round trip: every token of a byte-level or WordPiece tokenizer covers at least one byte.
The separator is the tokenizer's `sep_token`, read from config (default "[SEP]"; MERA's judge is a
BERT-family encoder, see `JudgeConfig.sep_token`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, Field, SecretStr

from evaluator.endpoints import EndpointPool, Notice, call
from evaluator.http_policy import SYSTEM_CLOCK, Clock, RetryPolicy, Timeouts
from evaluator.structured import gather_all

MAX_LENGTH = 8000
OFFSET = 5
TOKEN_LIMIT = MAX_LENGTH - OFFSET  # 7995
TRUNCATE_PROMPT_TOKENS = 8192  # sent with every request, as the official code does
SPECIAL_TOKEN_MARGIN = 8
ANSWER_MARKER = "ОТВЕТ"
DEFAULT_JUDGE_MODEL = "MERA-evaluation/MERA_Answer_judge"


class JudgeConfig(BaseModel):
    url: str = Field(description="Judge server base URL, e.g. http://127.0.0.1:8001 (a trailing /v1 is ignored).")
    model: str = DEFAULT_JUDGE_MODEL
    api_key: SecretStr | None = None
    sep_token: str = "[SEP]"
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    wait_s: float = Field(120.0, ge=0, description="How long to wait for the judge to become ready.")
    retry: RetryPolicy = Field(default_factory=lambda: RetryPolicy(max_attempts=4, max_downtime_s=120.0))

    @property
    def base_url(self) -> str:
        from evaluator.endpoints import normalise_endpoint

        return normalise_endpoint(self.url)


class JudgeError(Exception):
    """The judge could not answer (after retries); the sample stays unscored."""


@dataclass
class JudgeItem:
    key: str
    question: str
    gold: str | list[str]
    prediction: str


@dataclass
class JudgeVerdict:
    key: str
    score: int | None  # None: unscored, see `error`
    labels: list[int] = field(default_factory=list)
    inputs: int = 0
    error: str | None = None


class JudgeClient:
    def __init__(self, config: JudgeConfig, *, transport: httpx.AsyncBaseTransport | None = None,
                 clock: Clock | None = None, on_notice: Notice | None = None) -> None:
        self.config = config
        headers = {}
        if config.api_key is not None and config.api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        # imported here: aiohttp only when scoring uses a judge
        from evaluator.transport import AiohttpTransport, HttpSession

        self._http = HttpSession(transport or AiohttpTransport(max_connections=config.concurrency + 4), headers=headers)
        self.pool = EndpointPool([config.url], self._http, config.retry, clock or SYSTEM_CLOCK, on_notice)
        self._timeouts = Timeouts(write_s=config.timeout_s, first_byte_s=config.timeout_s)
        self._slots = asyncio.Semaphore(config.concurrency)
        self.requests = 0
        self.retries = 0

    async def __aenter__(self) -> JudgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.aclose()
        await self._http.aclose()

    async def wait_ready(self) -> None:
        """The chat endpoints' readiness rules: the judge's API answers, or one line says why it cannot."""
        await self.pool.wait_ready(self.config.wait_s)

    # --- HTTP under the evaluator's one call policy ------------------------------------------------
    def _counted_retry(self) -> None:
        self.retries += 1
        self.requests += 1

    async def _post(self, path: str, body: dict) -> dict:
        self.requests += 1
        result = await call(self.pool, lambda e: ("POST", e.api(path), body), self._timeouts,
                            on_retry=self._counted_retry)
        if result.decision.action != "ok":  # the request's own fault, or retries exhausted
            status = result.attempt.status
            where = f"HTTP {status}: " if status and status >= 400 and not result.decision.message.startswith("HTTP") else ""
            raise JudgeError(f"{path}: {where}{result.decision.message}")
        try:
            return json.loads(result.attempt.body)
        except ValueError as exc:
            raise JudgeError(f"{path}: malformed JSON from judge: {exc}") from None

    async def tokenize(self, text: str) -> list[int]:
        body = {"model": self.config.model, "prompt": text, "add_special_tokens": True}
        return list((await self._post("/tokenize", body))["tokens"])

    async def detokenize(self, tokens: Sequence[int]) -> str:
        body = {"model": self.config.model, "tokens": list(tokens)}
        return str((await self._post("/detokenize", body))["prompt"])

    async def classify(self, texts: list[str]) -> list[list[float]]:
        body = {"model": self.config.model, "input": texts, "truncate_prompt_tokens": TRUNCATE_PROMPT_TOKENS}
        data = (await self._post("/classify", body)).get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            raise JudgeError(f"/classify returned {len(data) if isinstance(data, list) else data!r} items "
                             f"for {len(texts)} inputs")
        return [list(item["probs"]) for item in data]

    # --- the MERA algorithm ---------------------------------------------------------------------
    async def _variants_of(self, text: str) -> list[str]:
        """`text`, or its head and tail 7995-token decodings when it is longer than that."""
        if len(text.encode("utf-8")) + SPECIAL_TOKEN_MARGIN <= TOKEN_LIMIT:
            return [text]
        tokens = await self.tokenize(text)
        if len(tokens) <= TOKEN_LIMIT:
            return [text]
        return [await self.detokenize(tokens[:TOKEN_LIMIT]), await self.detokenize(tokens[-TOKEN_LIMIT:])]

    async def judge_inputs(self, question: str, gold: str | list[str], prediction: str) -> list[str]:
        """`preprocess_request`: the inputs whose labels are max-ed (duplicates dropped)."""
        sep = self.config.sep_token
        inputs = await self._variants_of(question + sep + str(gold) + sep + str(prediction))
        after = str(prediction).split(ANSWER_MARKER)[-1].strip()
        if after:
            inputs += await self._variants_of(question + sep + str(gold) + sep + after)
        return list(dict.fromkeys(inputs))

    async def judge(self, item: JudgeItem) -> JudgeVerdict:
        async with self._slots:
            try:
                inputs = await self.judge_inputs(item.question, item.gold, item.prediction)
                probs = await self.classify(inputs)
            except JudgeError as exc:
                return JudgeVerdict(item.key, None, error=str(exc))
            except (KeyError, TypeError, ValueError) as exc:
                return JudgeVerdict(item.key, None, error=f"unexpected judge reply: {exc!r}")
        labels = [max(range(len(p)), key=p.__getitem__) for p in probs]  # argmax, first on ties
        return JudgeVerdict(item.key, max([0, *labels]), labels=labels, inputs=len(inputs))

    async def judge_all(self, items: Iterable[JudgeItem]) -> list[JudgeVerdict]:
        """Every item's verdict; an error no retry can fix (a UserError) stops them all and is raised."""
        return await gather_all(self.judge(item) for item in items)


async def judge_items(config: JudgeConfig, items: Iterable[JudgeItem]) -> list[JudgeVerdict]:
    async with JudgeClient(config) as client:
        await client.wait_ready()
        return await client.judge_all(items)


def run_judge(config: JudgeConfig, items: Iterable[JudgeItem]) -> list[JudgeVerdict]:
    """Synchronous entry for the CLI."""
    return asyncio.run(judge_items(config, list(items)))
