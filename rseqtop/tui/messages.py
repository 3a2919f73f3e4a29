"""Messages posted from the collection worker thread to the app (as
dataclasses, like Textualize/toolong's)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from rseqtop.model.snapshot import Snapshot


@dataclass
class SnapshotReady(Message):
    snapshot: Snapshot


@dataclass
class PollFailed(Message):
    error: str


@dataclass
class AnnotationReady(Message):
    """A section's listing (rseqtop.symbols.annotate.Listing), or why not."""

    pid: int
    start_ip: int
    listing: object
    error: str
