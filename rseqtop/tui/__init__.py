"""The Textual live view. `rows` is pure (no Textual import) and shared with
the batch/JSON output; `app.make_app(source)` builds the application."""
