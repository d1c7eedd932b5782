# SPDX-License-Identifier: Apache-2.0
"""Fuzzing: the kept corpus replayed on every run, and 100,000 atheris executions per target (slow).

A crash found by atheris lands in tests/fuzz/corpus/<target>/crash-*; commit it with the fix
and it is replayed here from then on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"
ROOT = Path(__file__).parents[2]
RUNS = int(os.environ.get("CARDD_FUZZ_RUNS", "100000"))


def _corpus() -> list[tuple[str, Path]]:
    return [
        (name, path)
        for name in sorted(TARGETS)
        for path in sorted((CORPUS / name).glob("*"))
        if path.is_file()
    ]


def test_every_target_has_seeds() -> None:
    for name in TARGETS:
        assert any((CORPUS / name).glob("seed-*")), f"{name}: run python -m tests.fuzz.make_seeds"


@pytest.mark.parametrize(("name", "path"), _corpus(), ids=lambda v: getattr(v, "name", v))
def test_corpus_input_is_handled(name: str, path: Path) -> None:
    TARGETS[name](path.read_bytes())


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_atheris_finds_no_crash(name: str) -> None:
    before = set((CORPUS / name).glob("crash-*"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.run",
            name,
            f"-runs={RUNS}",
            "-max_len=1024",
            "-timeout=10",
            "-rss_limit_mb=1024",
            "-print_final_stats=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=880,
    )
    new = set((CORPUS / name).glob("crash-*")) - before
    tail = "\n".join(proc.stderr.splitlines()[-25:])
    assert proc.returncode == 0 and not new, f"{name}: crash kept in {sorted(new)}\n{tail}"
    assert f"Done {RUNS} runs" in proc.stderr, tail
