"""Floor 6: the CLI, demo, replay, reports and the flow runner."""
