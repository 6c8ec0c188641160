"""`localtune eval`: on held-out rows, is the tuned GGUF better than its base, and better than showing
the base a few training rows in the prompt? Everything runs through llama.cpp on the exported files.

- rows.py: the rows to evaluate (a run's validation split or a data file) and the few-shot turns;
- metrics.py: exact match, token F1, ROUGE-L, bootstrap intervals, per-row wins;
- runner.py: the systems (tuned GGUF(s), base zero-shot, base few-shot) and the row-by-row loop;
- report.py: the terminal table and verdict, report.md, report.json, the chart, the model card.

Run as:  localtune eval RUN_DIR|GGUF [--data FILE] [--base GGUF] [--shots K] [--max-rows N] [--out DIR]
"""
