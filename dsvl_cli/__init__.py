"""dsvl: ask DeepSeek-VL questions about images from the shell.

Importing this package must stay cheap: no torch, no transformers (see tests/test_startup.py).
"""

__version__ = "0.1.0"
