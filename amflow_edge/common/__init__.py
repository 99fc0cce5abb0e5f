"""What every layer may use, the drivers and the inspection included: durable writes, backoff, file locations."""
