"""Scoring: answer matching, trace filters, verifiers, overlap metrics and the style report."""
