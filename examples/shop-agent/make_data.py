"""Writes the shop-agent example's requests: seeds.jsonl (two of each kind, with reference answers),
inputs.jsonl (requests for the teacher to act on) and test.jsonl (held out). Fixed seeds: running it
again writes the same files. Run from anywhere: python examples/shop-agent/make_data.py"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from teacher import requests  # noqa: E402


def write(name: str, rows: list[dict]) -> None:
    (HERE / name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    test = requests(120, seed=2)
    held_out = {row["input"] for row in test}
    seeds = [row for row in requests(40, seed=1) if row["input"] not in held_out][:12]
    taken = held_out | {row["input"] for row in seeds}
    inputs = [{"input": row["input"]} for row in requests(400, seed=3) if row["input"] not in taken]
    write("seeds.jsonl", seeds)
    write("inputs.jsonl", list({row["input"]: row for row in inputs}.values())[:300])
    write("test.jsonl", test)


if __name__ == "__main__":
    main()
