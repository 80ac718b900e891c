"""Recommendations: the online model, its baselines and the offline evaluator (issue 3)."""
