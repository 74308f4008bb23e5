"""The models on this machine: the Hugging Face cache and the tiny-random builds (`dsvl models`,
`pull`, `rm`). hub.py says where the cache is and whether the Hub answers; cache.py lists what is
there; fetch.py downloads and deletes. No torch, and huggingface_hub only inside functions."""
