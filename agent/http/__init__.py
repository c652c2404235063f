"""The agent's small HTTP/1.1 (h11 on asyncio streams): the local API, the household LAN."""
