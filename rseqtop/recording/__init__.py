"""Recordings: `rseqtop record` writes one (format.py), `rseqtop report`
reads one back (reader.py). The format is documented in docs/recording.md."""
