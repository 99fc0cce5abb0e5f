"""`amflow-edge`: the station's command line, one module per group of commands (entry point: main.main)."""
