"""Entry point of `python -m bench.compare_stacks` (the command line is in cli.py).

Run as:  python -m bench.compare_stacks --preset cpu --models tiny
"""

from .cli import main

if __name__ == "__main__":  # so that importing this module (pydoc, an import check) does not start a run
    main()
