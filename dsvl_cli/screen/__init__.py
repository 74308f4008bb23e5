"""What reaches a terminal: the process's streams and whether each is one (environment.py), untrusted
text made safe to show (text.py), and the live Markdown view (live.py)."""
