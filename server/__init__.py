"""gptserve's HTTP server: an OpenAI-compatible API over engine.AsyncEngine."""
