"""splitpin: route support conversations between language models from a Kafka stream."""

__version__ = "0.1.0"
