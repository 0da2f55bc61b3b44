"""Integrations with training frameworks: the only place lorascope imports torch / transformers.

hf.py: `LorascopeCallback`, a Hugging Face `Trainer` callback (above telemetry and monitor).
"""
