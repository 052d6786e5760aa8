"""Clients for gptserve: a terminal chat (chat.py) and a load generator (bench.py)."""
