"""Model backends behind one async interface: the local fleet, Anthropic, OpenAI-compatible."""
