"""Tiny local models and the small experiments the quickstart and ``bench/`` run on a CPU."""
