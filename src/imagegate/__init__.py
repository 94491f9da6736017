"""imagegate: a self-hosted, drop-in compatible server for Freepik's Gemini 2.5 Flash image API."""

__version__ = "0.1.0"
