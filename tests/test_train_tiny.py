"""The built-in tiny assets: built once, atomically, even when several ranks start together.

Proves: concurrent builders of the same asset all get one complete folder and leave no
temporary folder behind; a half-written leftover (a killed build) is replaced; the dataset
builder is deterministic.
"""

from __future__ import annotations

import threading
import time

from hpctune.train import tiny


def test_concurrent_builds_end_with_one_complete_folder(tmp_path):
    calls = []

    def slow_build(folder):
        calls.append(folder)
        (folder / "part1").write_text("a")
        time.sleep(0.2)  # both builders are inside the build at the same time
        (folder / "part2").write_text("b")

    target = tmp_path / "asset-v1"
    results = []
    threads = [threading.Thread(target=lambda: results.append(tiny.ensure(target, slow_build))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [target] * 4
    assert sorted(p.name for p in target.iterdir()) == [".complete", "part1", "part2"]
    assert [p.name for p in tmp_path.iterdir()] == ["asset-v1"]  # no temporary folder left
    assert len(calls) >= 1
    tiny.ensure(target, lambda f: (_ for _ in ()).throw(AssertionError("rebuilt")))  # cached now


def test_leftover_of_a_killed_build_is_replaced(tmp_path):
    target = tmp_path / "asset-v1"
    target.mkdir()
    (target / "half").write_text("x")  # no .complete marker
    tiny.ensure(target, lambda f: (f / "whole").write_text("y"))
    assert sorted(p.name for p in target.iterdir()) == [".complete", "whole"]


def test_dataset_is_deterministic(tmp_path):
    tiny.build_dataset(tmp_path / "a", n_train=20, n_test=5)
    tiny.build_dataset(tmp_path / "b", n_train=20, n_test=5)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
