"""The dataset pipeline: files -> validated examples -> token rows (see dataset.py for the stages).

Nothing here imports torch; the tokenizer is passed in by the caller.
"""

from localtune.data.dataset import LoadedData, PreparedData, load_examples, prepare_data
from localtune.data.formats import FORMATS, Example

__all__ = ["FORMATS", "Example", "LoadedData", "PreparedData", "load_examples", "prepare_data"]
