"""What reaches a terminal: untrusted text made safe to show, and the live Markdown view."""
