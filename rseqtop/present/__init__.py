"""What every front end shows, below all of them: the view model (rows),
the columns and their number formatting. Imports neither the TUI nor
Textual, so batch text, JSON and the trace stream load neither."""
