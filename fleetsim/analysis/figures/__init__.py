"""Figures of runs, one module per family (convergence, timeline, breakdown)."""
