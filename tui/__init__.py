"""The terminal client: a Textual screen (app.py), its bots (bots.py) and their WebSocket (client.py); layer 3."""
