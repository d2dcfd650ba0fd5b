"""The Kafka side: the consumer, the dead-letter writer, topics, and retry backoff."""
