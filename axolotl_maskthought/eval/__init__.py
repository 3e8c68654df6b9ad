"""Evaluation: prompts in the training layout, greedy generation (transformers, vLLM),
the papers' scoring, and the in-training accuracy callback."""
