"""dsvl: ask DeepSeek-VL questions about images from the shell.

Importing this package must stay cheap: no torch, no transformers (tests/test_ask.py checks that `--help` imports neither).
"""

__version__ = "0.1.0"
