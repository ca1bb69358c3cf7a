"""The Kafka layer: local broker, admin, delivery-checked producer.

Nothing from confluent_kafka escapes this package except through splitpin.errors.
"""
