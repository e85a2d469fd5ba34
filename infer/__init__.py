"""Using a trained model: sampling, perplexity, lm-evaluation-harness scores and the Hugging Face export.

Every command takes a *source*: a run dir, a DCP checkpoint dir or an export dir (see infer/load.py).

    python -m infer.sample runs/tiny-diff_v2 --prompt "def main("
    python -m infer.perplexity runs/tiny-diff_v2 some_file.py
    python -m infer.export_hf runs/tiny-diff_v2 hf/tiny-diff_v2
    python -m infer.evaluate runs/tiny-diff_v2 --tasks hellaswag arc_easy   # needs network for the data
"""
