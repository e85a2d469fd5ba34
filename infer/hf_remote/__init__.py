"""The Hugging Face wrapper around model/, written into an export as `trust_remote_code` modules.

These files are real project modules (tested here, linted here); `infer/export_hf.py` copies them and the
model/ modules they import into the export dir, rewriting `from model.x` / `from infer.hf_remote.x` into
relative imports, so the export needs only torch and transformers, never this project.
"""
