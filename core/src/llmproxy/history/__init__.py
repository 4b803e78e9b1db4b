"""History: the store protocol, memory and SQLite stores, and the seed's LLMMessageHandler."""
