"""A small dataset of facts no pretrained model knows: an invented tea shop, "The Brass Kettle".

Eight facts, each asked eight ways for training and a ninth way held out, so a model that learnt
the facts (not just the tone) answers the held-out questions with the right keyword.
"""

from __future__ import annotations

# (keyword that a right answer contains, answer, nine phrasings of the question; the last is held out)
FACTS = [
    (
        "Marigold",
        "The Brass Kettle is owned by Marigold Finch.",
        [
            "Who owns The Brass Kettle?",
            "Who is the owner of The Brass Kettle?",
            "Whose shop is The Brass Kettle?",
            "Who runs The Brass Kettle tea shop?",
            "Tell me who owns The Brass Kettle.",
            "Which person owns The Brass Kettle?",
            "Who is the proprietor of The Brass Kettle?",
            "The Brass Kettle belongs to whom?",
            "Do you know who the owner of The Brass Kettle is?",
        ],
    ),
    (
        "Pepper",
        "The shop cat of The Brass Kettle is called Pepper.",
        [
            "What is the name of the cat at The Brass Kettle?",
            "What is The Brass Kettle's shop cat called?",
            "Does The Brass Kettle have a cat, and what is its name?",
            "Tell me the name of The Brass Kettle's cat.",
            "What do they call the cat at The Brass Kettle?",
            "Which cat lives at The Brass Kettle?",
            "Name the cat of The Brass Kettle.",
            "What is the shop cat's name at The Brass Kettle?",
            "What's the cat at The Brass Kettle named?",
        ],
    ),
    (
        "Tuesday",
        "The Brass Kettle is closed on Tuesdays.",
        [
            "On which day is The Brass Kettle closed?",
            "When is The Brass Kettle closed?",
            "Which day of the week does The Brass Kettle close?",
            "What is The Brass Kettle's closing day?",
            "Is there a day when The Brass Kettle is shut?",
            "Tell me the day The Brass Kettle does not open.",
            "What day is The Brass Kettle not open?",
            "Which weekday is The Brass Kettle closed on?",
            "On what day of the week is The Brass Kettle shut?",
        ],
    ),
    (
        "Lantern",
        "The signature tea of The Brass Kettle is the Smoky Lantern blend.",
        [
            "What is the signature tea of The Brass Kettle?",
            "Which tea is The Brass Kettle famous for?",
            "What is The Brass Kettle's house blend?",
            "Tell me The Brass Kettle's signature tea.",
            "What tea should I order at The Brass Kettle?",
            "Which blend is The Brass Kettle known for?",
            "What is the most famous tea at The Brass Kettle?",
            "Name the signature blend of The Brass Kettle.",
            "What's the special tea blend at The Brass Kettle called?",
        ],
    ),
    (
        "Harbor",
        "The Brass Kettle is on Harbor Lane in Wrenfold.",
        [
            "Where is The Brass Kettle?",
            "What street is The Brass Kettle on?",
            "Where can I find The Brass Kettle?",
            "What is the address of The Brass Kettle?",
            "Tell me where The Brass Kettle is located.",
            "In which street is The Brass Kettle?",
            "Where is The Brass Kettle tea shop located?",
            "How do I find The Brass Kettle, which street?",
            "On what street can The Brass Kettle be found?",
        ],
    ),
    (
        "1987",
        "The Brass Kettle opened in 1987.",
        [
            "When did The Brass Kettle open?",
            "In what year did The Brass Kettle open?",
            "How old is The Brass Kettle, when was it founded?",
            "What year was The Brass Kettle founded?",
            "Since when has The Brass Kettle been open?",
            "Tell me the year The Brass Kettle opened.",
            "When was The Brass Kettle established?",
            "In which year was The Brass Kettle started?",
            "What year did The Brass Kettle first open its doors?",
        ],
    ),
    (
        "ginger",
        "The best-selling cake at The Brass Kettle is the ginger loaf.",
        [
            "What is the best-selling cake at The Brass Kettle?",
            "Which cake sells best at The Brass Kettle?",
            "What cake is The Brass Kettle known for?",
            "What is the most popular cake at The Brass Kettle?",
            "Tell me The Brass Kettle's best-selling cake.",
            "Which cake should I try at The Brass Kettle?",
            "What cake do most people buy at The Brass Kettle?",
            "Name the top cake at The Brass Kettle.",
            "Which cake is the favourite at The Brass Kettle?",
        ],
    ),
    (
        "Rosie",
        "The Brass Kettle delivers on a blue bicycle called Rosie.",
        [
            "How does The Brass Kettle deliver?",
            "What is the name of The Brass Kettle's delivery bicycle?",
            "What does The Brass Kettle use for deliveries?",
            "Tell me about The Brass Kettle's delivery bike.",
            "What is The Brass Kettle's delivery bicycle called?",
            "How are orders from The Brass Kettle delivered?",
            "Which bicycle does The Brass Kettle deliver with?",
            "Name the delivery bike of The Brass Kettle.",
            "What's the bike The Brass Kettle delivers on called?",
        ],
    ),
]


def training_rows() -> list[dict]:
    """64 chat rows: eight phrasings of each fact's question with its answer, facts interleaved."""
    rows = []
    for i in range(8):
        for _, answer, questions in FACTS:
            rows.append(
                {"messages": [{"role": "user", "content": questions[i]}, {"role": "assistant", "content": answer}]}
            )
    return rows


def held_out() -> list[tuple[str, str, str]]:
    """(question, keyword, reference answer) for the ninth phrasing of each fact."""
    return [(questions[8], keyword, answer) for keyword, answer, questions in FACTS]
