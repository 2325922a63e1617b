"""Comparing the two platforms' answers: rules, diffs, the diff log and QA reports."""
