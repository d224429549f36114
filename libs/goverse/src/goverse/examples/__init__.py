"""Demo objects hosted by default: a Counter and a ChatRoom (see counter.py and chat.py)."""
