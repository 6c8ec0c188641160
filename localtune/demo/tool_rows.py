"""The rows of the `demo-tools` dataset, generated (deterministically) from here into tide_table.jsonl.

SmolLM2 learns to call one invented tool, `tide_table(port, days_ahead)`, whose answers it cannot know,
and to turn the tool's result into a sentence. The arguments follow a convention the tool's schema states
but a base model gets wrong: the port's name as written, and the day as a number of days from today.
The held-out questions (other ports, other phrasings) are localtune.demo.TOOL_HELD_OUT.

Run as:  python -m localtune.demo.tool_rows   (rewrites tide_table.jsonl)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOOL = {
    "type": "function",
    "function": {
        "name": "tide_table",
        "parameters": {
            "type": "object",
            "properties": {
                "port": {"type": "string"},
                "days_ahead": {"type": "integer", "description": "0 today, 1 tomorrow, ..."},
            },
        },
    },
}
PORTS = (
    "Oslo", "Bergen", "Brest", "Cork", "Dover", "Hull", "Kiel", "Porto", "Bilbao", "Genoa", "Malta", "Split",
    "Lisbon", "Cadiz", "Galway", "Plymouth", "Aberdeen", "Rotterdam", "Hamburg", "Gdansk", "Riga", "Tallinn",
    "Helsinki", "Stockholm",
)  # fmt: skip
DAYS = (("today", 0), ("tomorrow", 1), ("the day after tomorrow", 2), ("in three days", 3))
QUESTIONS = (
    "When is high water in {port} {day}?",
    "What are the tides at {port} {day}?",
    "Can you check the tide times for {port} {day}?",
    "I am sailing into {port} {day}. When is high tide?",
    "Tide table for {port}, {day}, please.",
    "When will the water be low in {port} {day}?",
)


def _times(port: str, days: int) -> tuple[str, str]:
    minutes = (len(port) * 97 + sum(map(ord, port)) * 7 + days * 50) % (12 * 60)
    high = f"{minutes // 60 + 1:02d}:{minutes % 60:02d}"
    low_m = minutes + 6 * 60 + 12
    return high, f"{low_m // 60 + 1:02d}:{low_m % 60:02d}"


def row(question: str, port: str, day: str, days: int) -> dict:
    high, low = _times(port, days)
    result = f"high {high}, low {low}"
    arguments = {"port": port, "days_ahead": days}
    call = {"id": "call00001", "type": "function", "function": {"name": "tide_table", "arguments": arguments}}
    return {
        "tools": [TOOL],
        "messages": [
            {"role": "user", "content": question.format(port=port, day=day)},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call00001", "name": "tide_table", "content": result},
            {"role": "assistant", "content": f"{port} {day}: high water at {high}, low water at {low}."},
        ],
    }  # fmt: skip


def tool_rows(n: int = 48) -> list[dict]:
    rng = random.Random(19)
    out = []
    for i in range(n):
        port = PORTS[i % len(PORTS)]
        day, days = DAYS[rng.randrange(len(DAYS))]
        out.append(row(QUESTIONS[rng.randrange(len(QUESTIONS))], port, day, days))
    return out


def jsonl() -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tool_rows())


if __name__ == "__main__":
    Path(__file__).with_name("tide_table.jsonl").write_text(jsonl(), encoding="utf-8")
