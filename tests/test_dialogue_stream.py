"""ruTiE streamed from the split: ids first (no media read), then each dialogue's turns read in order with only
the history window kept, so memory follows the history length and the dialogues in flight, not the split."""

from __future__ import annotations

import io
import random
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from evaluator import data as data_module
from evaluator import dialogue
from evaluator.data import DataError, DataSource, SplitRows, index_rows, iter_rows_at, iter_samples
from evaluator.dialogue import answer_letter, order_refs
from evaluator.registry import TASKS
from tests.test_dialogue import ScriptedClient, assistant_letters, make_ctx

SPEC = TASKS["ruTiE-Audio"]
TEMPLATE = "Послушайте.\n<audio>\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}\nОтвет:"


def clip(i: int) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, np.full(441, (i % 50) / 100, np.float32), 44100, format="WAV")
    return buf.getvalue()


def write_split(root, dialogues: int, turns: int, *, shuffle: bool = False, group: int = 10):
    ids = [11 + 500 * d + q for d in range(dialogues) for q in range(turns)]
    if shuffle:
        random.Random(5).shuffle(ids)
    rows = [{"instruction": TEMPLATE, "inputs": {"audio": {"bytes": clip(i), "path": f"{i}.wav"},
             **{f"option_{c}": f"{c}{i}" for c in "abcd"}}, "outputs": "", "meta": {"id": i}} for i in ids]  # fmt: skip
    path = root / "MERA-evaluation" / "ruTiE-Audio" / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=group)
    return DataSource(data_dir=root), ids


class Materialised:
    """Counts the media objects alive: every decoded row holds one."""

    def __init__(self, monkeypatch) -> None:
        self.alive = 0
        self.decoded = 0
        real = data_module.decode_media

        def tracking(kind, value):
            item = real(kind, value)
            if item is not None:
                self.alive += 1
                self.decoded += 1
                weakref.finalize(item, self._gone)
            return item

        monkeypatch.setattr(data_module, "decode_media", tracking)

    def _gone(self) -> None:
        self.alive -= 1

    def now(self) -> int:
        return self.alive  # freed by reference counting the moment nothing holds them


class WatchingClient(ScriptedClient):
    def __init__(self, watch: Materialised, **kw) -> None:
        super().__init__(**kw)
        self.watch = watch
        self.peak = 0

    async def send(self, request):
        self.peak = max(self.peak, self.watch.now())
        return await super().send(request)


def test_the_index_pass_reads_ids_only(tmp_path, monkeypatch):
    source, ids = write_split(tmp_path, 2, 5)
    monkeypatch.setattr(data_module, "decode_media", lambda *a: pytest.fail("the index pass decoded media"))
    refs = index_rows(SPEC, "test", source)
    assert [(r.position, r.id) for r in refs] == list(enumerate(ids))
    assert refs[0].key == "ruTiE-Audio/-/test/11" and refs[0].split == "test" and refs[0].domain is None
    assert [r.id for r in index_rows(SPEC, "test", source, limit=3)] == ids[:3]


def test_rows_by_position_in_any_order(tmp_path):
    source, ids = write_split(tmp_path, 2, 25, group=7)
    everything = list(iter_samples(SPEC, "test", source))
    for positions in ([0, 1, 2], [30, 31, 49], [40, 3, 41, 0], [49]):
        got = list(iter_rows_at(SPEC, "test", source, positions))
        assert [s.id for s in got] == [ids[p] for p in positions] and [s.index for s in got] == positions
        for g, p in zip(got, positions, strict=True):
            assert (g.instruction, g.inputs, g.meta) == (everything[p].instruction, everything[p].inputs,
                                                         everything[p].meta)
            assert np.array_equal(g.media["audio"].array, everything[p].media["audio"].array)
    with pytest.raises(DataError, match="row 50 is past the end"):
        list(iter_rows_at(SPEC, "test", source, [50]))


async def test_memory_follows_the_history_not_the_split(tmp_path, monkeypatch):
    source, ids = write_split(tmp_path, 3, 60)  # 180 turns, 3 dialogues
    watch = Materialised(monkeypatch)
    answers = {f"ruTiE-Audio/-/test/{i}": random.Random(i).choice(["A", "B", "C", "D", "нет"]) for i in ids}
    client = WatchingClient(watch, answers=answers, delay=0)
    ctx, store = make_ctx(tmp_path / "run", client, "ruTiE-Audio", rutie_history=3)
    await dialogue.run_task(SPEC, SplitRows(SPEC, "test", source), ctx)

    assert len(client.requests) == 180 and watch.decoded == 180  # every row read once
    # at most history + 1 turns per dialogue (and one being read) are alive, whatever the split's size
    assert client.peak <= 3 * (3 + 1 + 1), client.peak
    by_key = {r.sample_key: r for r in client.requests}
    for turns in order_refs(index_rows(SPEC, "test", source)):  # the official order, the model's own letters
        for t in turns:
            earlier = [p for p in turns if t.question_id - 3 <= p.question_id < t.question_id]
            assert assistant_letters(by_key[t.row.key]) == [answer_letter(answers[p.row.key]) for p in earlier]
    assert len(list(store.replies(task="ruTiE-Audio"))) == 180
    assert {e.sample_key for e in store.expected(task="ruTiE-Audio")} == set(answers)


async def test_resume_reads_only_the_pending_turns_and_the_ones_they_replay(tmp_path, monkeypatch):
    source, ids = write_split(tmp_path, 2, 20)
    first = ScriptedClient({f"ruTiE-Audio/-/test/{i}": "B" for i in ids}, delay=0)
    ctx, store = make_ctx(tmp_path / "run", first, "ruTiE-Audio", rutie_history=2)
    await dialogue.run_task(SPEC, SplitRows(SPEC, "test", source, limit=35), ctx)  # dialogue 1 cut at turn 15
    store.close()
    watch = Materialised(monkeypatch)
    again = ScriptedClient(delay=0)
    ctx, store = make_ctx(tmp_path / "run", again, "ruTiE-Audio", rutie_history=2)
    await dialogue.run_task(SPEC, SplitRows(SPEC, "test", source), ctx)
    assert [r.sample_key for r in again.requests] == [f"ruTiE-Audio/-/test/{511 + q}" for q in range(15, 20)]
    assert watch.decoded == 5 + 2  # the 5 pending turns and the 2 finished ones turn 15 replays
    assert assistant_letters(again.requests[0]) == ["B", "B"]
    assert ctx.progress["ruTiE-Audio"].skipped == 35


async def test_a_split_out_of_order_still_runs_in_dialogue_order(tmp_path):
    source, ids = write_split(tmp_path, 2, 12, shuffle=True, group=4)
    client = ScriptedClient({f"ruTiE-Audio/-/test/{i}": "A" for i in ids}, delay=0)
    ctx, store = make_ctx(tmp_path / "run", client, "ruTiE-Audio", rutie_history=1)
    await dialogue.run_task(SPEC, SplitRows(SPEC, "test", source), ctx)
    for d in (0, 1):
        sent = [int(r.sample_key.rsplit("/", 1)[1]) for r in client.requests
                if (int(r.sample_key.rsplit("/", 1)[1]) - 11) // 500 == d]
        assert sent == sorted(sent) and len(sent) == 12


def test_hub_path_index_and_rows_match_the_local_reader(tmp_path, monkeypatch):
    """Through `datasets.load_dataset(streaming=True)` (the split's folder in place of the hub id, offline):
    the meta-only index and the rows by position are those of the local reader."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    source, ids = write_split(tmp_path / "snap", 1, 6)
    hub_spec = SPEC.model_copy(update={"hub_id": str(tmp_path / "snap" / SPEC.hub_id)})
    hub = DataSource(cache_dir=tmp_path / "hf-cache")
    assert [r.id for r in index_rows(hub_spec, "test", hub)] == ids
    local = list(iter_rows_at(SPEC, "test", source, [0, 4, 5, 2]))
    remote = list(iter_rows_at(hub_spec, "test", hub, [0, 4, 5, 2]))
    assert [(s.id, s.index, s.inputs) for s in remote] == [(s.id, s.index, s.inputs) for s in local]
    assert all(np.array_equal(a.media["audio"].array, b.media["audio"].array) for a, b in zip(local, remote, strict=True))
