"""The station's HTTP API (FastAPI on uvicorn, on a thread of the daemon) and the operator's screen it serves."""
