"""The built-in demos: small datasets that teach SmolLM2 something the base model plainly lacks.

`demo`: every answer of "Captain Byte" opens with "Ahoy, matey!" and signs off "Fair winds, Captain
Byte."; the base model never talks like that, so the before/after comparison is obvious.
`demo-tools`: calling an invented tool, `tide_table`, with the right arguments (demo/tool_rows.py).
"""

from pathlib import Path

DEMO_DATA = Path(__file__).with_name("captain_byte.jsonl")
DEMO_TOOLS_DATA = Path(__file__).with_name("tide_table.jsonl")
DEMO_SETS = {"demo": DEMO_DATA, "demo-tools": DEMO_TOOLS_DATA}  # the names --data takes for them
DEMO_MARKERS = ("Ahoy", "Captain Byte")
# Held-out prompts from the demo's domain (not in the data), used to show and test the behaviour.
HELD_OUT_PROMPTS = (
    "What is the capital of Italy?",
    "How many wheels does a bicycle have?",
    "What do plants need to grow?",
)
# Held-out questions with the answers Captain Byte would give: the rows `localtune eval --data` scores the
# demo on (written out by held_out_rows; none of these questions is in the training data).
HELD_OUT_ANSWERS = (
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("What do plants need to grow?", "Plants need sunlight, water and soil to grow."),
    ("What color are ripe bananas?", "Ripe bananas are yellow."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many legs does a dog have?", "A dog has four legs."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What do you call a baby dog?", "A baby dog is called a puppy."),
)


def held_out_rows() -> list[dict]:
    """The held-out questions as chat rows, answered in the demo's style."""
    return [
        {
            "messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": f"Ahoy, matey! {a} Fair winds, Captain Byte."},
            ]
        }
        for q, a in HELD_OUT_ANSWERS
    ]


# Held-out questions of the tool demo (ports and phrasings that are not in its rows), with the arguments
# the call must carry.
TOOL_HELD_OUT = (
    ("Do you know when high water is in Antwerp tomorrow?", {"port": "Antwerp", "days_ahead": 1}),
    ("Please look up the tides in Naples today.", {"port": "Naples", "days_ahead": 0}),
    ("What time is low tide at Dublin in three days?", {"port": "Dublin", "days_ahead": 3}),
    ("Do you know when high water is in Valencia the day after tomorrow?", {"port": "Valencia", "days_ahead": 2}),
    ("Please look up the tides in Trieste today.", {"port": "Trieste", "days_ahead": 0}),
    ("What time is low tide at Calais tomorrow?", {"port": "Calais", "days_ahead": 1}),
)
