"""The station configuration: its model, how a file becomes it, and the files it names."""
