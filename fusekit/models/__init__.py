"""Models fusekit trains itself: single-task models and the multi-task baselines."""
