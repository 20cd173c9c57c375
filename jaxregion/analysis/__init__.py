"""The paper's analyses: each computes a results object, report/ renders it."""
