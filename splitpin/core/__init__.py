"""Floor 2: settings, errors of the Kafka layer, tokens, metrics, the router's model."""
