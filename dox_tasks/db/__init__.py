"""The results layer: DOX's durable record of every workflow, step and event."""
