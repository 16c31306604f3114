"""Benchmarks that print ratios measured side by side against named peers."""
