"""The mock's photographic simulator: renderer, sensor, tray, printing defects and demo parts.

Used by the mock driver, `amflow-edge render`, tests and benchmarks; never by the inspection."""
