"""The Textual terminal app (installed as `localtune.tui`). Only this package imports textual."""
