"""The pure parts of bench/peers.py (the benchmark itself is run by hand: it installs the peers and starts a server)."""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import sys

import pytest

from tests.server_process import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location("bench_peers", PROJECT_ROOT / "bench" / "peers.py")
peers = importlib.util.module_from_spec(_spec)
sys.modules["bench_peers"] = peers  # dataclasses look their module up while the class is built
_spec.loader.exec_module(peers)
Pass = peers.Pass


def test_parse_passes_reads_tools_and_concurrency():
    assert peers.parse_passes("mera-eval@64, lm-eval@8,lmms-eval,mera-eval:transport@1") == [
        Pass("mera-eval", 64), Pass("lm-eval", 8), Pass("lmms-eval", 64), Pass("mera-eval:transport", 1)]


@pytest.mark.parametrize("text, problem", [
    ("vllm-bench@64", "unknown tool"), ("mera-eval@0", "positive integer"), ("lm-eval@x", "positive integer"),
    ("lm-eval@4,lm-eval@4", "twice"), (" , ", "no pass"), ("mera-eval:@4", "unknown tool"),
])
def test_parse_passes_refuses_bad_lists(text, problem):
    with pytest.raises(argparse.ArgumentTypeError, match=problem):
        peers.parse_passes(text)


def test_round_order_puts_every_pass_in_every_position_once_per_cycle():
    passes = peers.parse_passes("mera-eval@64,lm-eval@64,lmms-eval@64,mera-eval:b@64")
    orders = [peers.round_order(passes, r) for r in range(len(passes))]
    for order in orders:
        assert sorted(order, key=str) == sorted(passes, key=str)
    for position in range(len(passes)):
        assert {order[position] for order in orders} == set(passes)
    assert orders[0] == passes and peers.round_order(passes, len(passes)) == passes


def _event(t, duration_ms, route="/v1/chat/completions"):
    return {"route": route, "t": t, "duration_ms": duration_ms}


def test_send_phase_is_first_arrival_to_last_response_of_the_chat_requests_in_the_window():
    events = [_event(5.0, 1000), _event(100.0, 500),  # an earlier pass's requests
              _event(101.0, 10, "/v1/models"),  # readiness probe: not a chat request
              _event(102.0, 1500), _event(103.0, 200), _event(104.5, 3000)]
    first, last, count = peers.send_phase(events, since=100.2, until=200)
    assert (first, last, count) == (pytest.approx(100.5), 104.5, 3)
    assert peers.send_phase(events, since=300, until=400) is None


def test_at_the_server_gives_the_ramp_to_full_slots_and_the_mean_latency_of_the_passs_chat_requests():
    # arrivals (t - duration): 100.0, 100.1, 100.5, 103.0; the second pass-earlier event is outside the window
    events = [_event(50.0, 1000), _event(101.0, 1000), _event(101.1, 1000), _event(102.5, 2000),
              _event(103.1, 100), _event(104.0, 5, "/metrics")]
    seen = peers.at_the_server(events, since=100.2, until=200, concurrency=3)
    assert seen == {"ramp_s": pytest.approx(0.5), "latency_ms": pytest.approx(1025.0)}
    assert peers.at_the_server(events, since=100.2, until=200, concurrency=64)["ramp_s"] == pytest.approx(3.0)
    assert peers.at_the_server(events, since=300, until=400, concurrency=3) is None


def test_compare_answers_counts_real_and_whitespace_only_differences():
    reference = {"a": "5dwi", "b": "x\t", "c": "same", "d": "gone"}
    assert peers.compare_answers(reference, dict(reference))["identical"]
    stripped = {"a": "5dwi", "b": "x", "c": "same", "d": "gone"}
    result = peers.compare_answers(reference, stripped)
    assert not result["identical"] and result["same_after_strip"]
    assert (result["different"], result["whitespace_only"]) == (0, 1)
    other = {"a": "\x1d5dwi", "b": "y", "c": "same", "e": "new"}
    result = peers.compare_answers(reference, other)
    assert not result["same_after_strip"]
    assert (result["different"], result["whitespace_only"], result["missing"], result["extra"]) == (1, 1, 1, 1)
    assert result["examples"] == [{"key": "b", "reference": "x\t", "this": "y"}]


def test_summarize_gives_median_and_range():
    assert peers.summarize([3.0, 1.0, 2.0, 10.0]) == "2.50 (1.00-10.00)"
    assert peers.summarize([]) == ""


def test_table_leaves_out_warmup_and_failed_passes():
    p = Pass("lm-eval", 64)
    same = peers.compare_answers({"a": "x"}, {"a": "x"})
    results = [
        {"pass": p.name, "round": "warmup", "wall_s": 99.0, "startup_s": 90.0, "send_s": 9.0, "cpu_s": 9.0,
         "peak_rss_mb": 999.0, "compare": same},
        *({"pass": p.name, "round": f"r{i}", "wall_s": w, "startup_s": 1.0, "send_s": 2.0, "ramp_s": 0.1,
           "latency_ms": 900.0, "cpu_s": 3.0, "peak_rss_mb": 100.0, "compare": same}
          for i, w in enumerate([10.0, 12.0, 11.0])),
        {"pass": p.name, "round": "r9", "error": "exit 1", "wall_s": 1.0, "compare": same},
    ]
    row = peers.table(results, [p]).splitlines()[-1]
    assert row == ("| lm-eval@64 | 3 | 11.00 (10.00-12.00) | 1.00 (1.00-1.00) | 2.00 (2.00-2.00) | 0.10 (0.10-0.10) "
                   "| 900.00 (900.00-900.00) | 3.00 (3.00-3.00) | 100.00 (100.00-100.00) | 5/5 passes |")


def test_bench_images_survive_a_png_round_trip_byte_for_byte():
    """lmms-eval re-encodes every image as PNG; the bench's images must come back as the same bytes."""
    from PIL import Image

    for i in itertools.islice(range(4), 2):  # a noisy photo and a CLEVR-like scene
        data = peers.bench_image(i)
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.save(buf, format="PNG")
        assert buf.getvalue() == data
