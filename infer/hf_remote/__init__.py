"""The Hugging Face wrapper around model/, written into an export as `trust_remote_code` modules.

These files are real project modules (tested here, linted here); `infer/export_hf.py` copies them and the
model/ modules they reach into the export dir (model/ files unchanged: they import each other relatively;
these two files' `from model.x` lines become `from .x`), so the export needs only torch and transformers.
"""
