"""Your setup: the config file (config.py), `dsvl doctor` (doctor.py, fit.py: will a model fit
this GPU), shell completion of model names and image paths (completion.py). No torch at import."""
