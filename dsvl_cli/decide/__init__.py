"""Typed questions about an input (OpenAI's Decisions API): questions.py checks them and builds answers."""
