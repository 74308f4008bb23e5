"""`dsvl eval`: benchmark files, prompts, answer extraction, metrics, the report (a front end on batch)."""
