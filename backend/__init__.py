"""Everything that is not a widget. Never imports gradio (a test checks it)."""
