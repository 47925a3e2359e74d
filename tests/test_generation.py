"""Per-task generation settings: one table in the registry (each value with its source), used by the request
builder, overridden only by flags given explicitly, recorded in every run's configuration, shown by `tasks`."""

from __future__ import annotations

import subprocess
import sys

from evaluator.cli import build_parser
from evaluator.cli.run import config_from_args
from evaluator.registry import FORK_DEFAULTS, GENERATION_SOURCES, TASKS, GenerationSettings
from evaluator.requests import RequestOptions, build_request, generation_for
from evaluator.schema import GenerationParams, Sample
from tests.server_process import child_env

LISTED_IN_THE_ENTRY = {"ruCommonVQA", "ruCLEVR", "WEIRD", "ruNaturalScienceVQA", "LabTabVQA", "RealVQA", "ruHHH-Image",
                       "ruMathVQA", "SchoolScienceVQA", "UniScienceVQA", "CommonVideoQA", "RealVideoQA", "ruHHH-Video"}


def test_every_task_has_its_settings_and_a_source_for_each_value():
    for name, spec in TASKS.items():
        g = spec.generation
        assert set(g.sources) == set(GenerationSettings.FIELDS) and set(g.sources.values()) <= set(GENERATION_SOURCES)
        expected = "entry" if name in LISTED_IN_THE_ENTRY else "assumed"
        assert g.sources["max_tokens"] == g.sources["stop"] == g.sources["temperature"] == expected, name
        # the entry's until=["<eos>"];do_sample=false;temperature=0;max_gen_toks=10000 and seed 1234
        assert g.values() == {"temperature": 0.0, "max_tokens": 10000, "stop": ("<eos>",), "seed": 1234}
    assert FORK_DEFAULTS == {"temperature": 0.0, "max_tokens": 256, "stop": ("\n\n",), "seed": 1234}


def sample(task: str) -> Sample:
    return Sample(task=task, split="test", index=0, id=1, instruction="вопрос", inputs={})


def test_requests_take_the_tasks_settings_unless_a_value_is_given():
    spec = TASKS["ruSLUn"].model_copy(update={"generation": GenerationSettings(
        max_tokens=256, stop=("\n\n",), sources=dict.fromkeys(GenerationSettings.FIELDS, "assumed"))})
    resolved = generation_for(spec, GenerationParams(model="m"))
    assert (resolved.max_tokens, resolved.stop, resolved.temperature, resolved.seed) == (256, ["\n\n"], 0.0, 1234)
    given = generation_for(spec, GenerationParams(model="m", max_tokens=16, seed=None))
    assert (given.max_tokens, given.stop, given.seed) == (16, ["\n\n"], None)  # explicit values win, None included
    body = build_request(sample("ruEnvAQA"), RequestOptions(params=GenerationParams(model="m"))).payload()
    assert {k: body[k] for k in ("max_tokens", "stop", "temperature", "seed")} == {
        "max_tokens": 10000, "stop": ["<eos>"], "temperature": 0.0, "seed": 1234}


def parse(*flags: str):
    return build_parser().parse_args(["run", "--endpoint", "http://127.0.0.1:9", "--output", "o", *flags])


def test_only_flags_given_override_and_the_run_records_every_tasks_settings():
    default = config_from_args(parse())
    assert default.options.params.model_fields_set - {"model", "extra_body"} == set()
    identity = default.identity()
    assert identity["params"] == {"extra_body": {}}  # no generation flag given
    assert set(identity["generation"]) == set(TASKS)
    assert identity["generation"]["AQUARIA"] == {"temperature": 0.0, "max_tokens": 10000, "seed": 1234,
                                                 "stop": ["<eos>"], "extra_body": {}}
    short = config_from_args(parse("--max-tokens", "256", "--stop", "\n\n"))
    assert short.identity()["params"]["max_tokens"] == 256
    assert all(g["max_tokens"] == 256 and g["stop"] == ["\n\n"] for g in short.identity()["generation"].values())
    assert short.identity() != identity


def test_tasks_command_shows_each_tasks_settings_and_sources():
    out = subprocess.run([sys.executable, "-m", "evaluator.cli", "tasks"], capture_output=True, text=True,
                         env=child_env({"COLUMNS": "400"}), timeout=120).stdout
    assert out.count("max_tokens 10000") == len(TASKS)
    assert out.count("(assumed, entry-seed)") == len(TASKS) - len(LISTED_IN_THE_ENTRY)
    assert "assumed: not listed in the leaderboard entry" in out
