"""The `localtune` command: one module per command (or group of commands), each a thin function over the
headless core. Options that set configuration knobs are generated from the config fields (options.py);
the events a command's run emits are printed by printers.py with the core's one renderer.

Importing this package imports the commands, which import only click and the torch-free config, so
`localtune --help` starts fast.

Run as:  localtune --help
"""

from localtune.cli import chat, data, distill, evaluate, export, quick, tools, train  # noqa: F401 - registers the commands
from localtune.cli.main import main

__all__ = ["main"]
