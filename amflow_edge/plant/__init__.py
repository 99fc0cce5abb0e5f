"""The plant's side of the contract: a reference consumer that stores every scan event in PostgreSQL.

What an integrator copies. It runs on a plant server, never on a station: it imports nothing of the station
but the payload models, and its database driver (psycopg, the `plant` extra) is needed by nothing else.
"""
