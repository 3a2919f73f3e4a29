"""The Textual live view. What it shows comes from rseqtop.present (shared
with the batch/JSON output); `app.make_app(source)` builds the application."""
