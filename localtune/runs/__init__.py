"""The workspace of run folders: the folder's layout and typed run.json (layout.py), the one-writer lock
(lock.py), and listing, starting and stopping runs (workspace.py).

Importing this package loads neither torch nor textual (a test checks it): the TUI and `--help` stay fast.
"""

from localtune.runs.layout import RunDir, RunFolderError, RunInfo

__all__ = ["RunDir", "RunFolderError", "RunInfo"]
