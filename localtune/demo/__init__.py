"""The built-in demo: a small dataset that teaches SmolLM2 an unmistakable house style.

Every answer of "Captain Byte" opens with "Ahoy, matey!" and signs off "Fair winds, Captain Byte.";
the base model never talks like that, so the before/after comparison is obvious.
"""

from pathlib import Path

DEMO_DATA = Path(__file__).with_name("captain_byte.jsonl")
DEMO_MARKERS = ("Ahoy", "Captain Byte")
# Held-out prompts from the demo's domain (not in the data), used to show and test the behaviour.
HELD_OUT_PROMPTS = (
    "What is the capital of Italy?",
    "How many wheels does a bicycle have?",
    "What do plants need to grow?",
)
