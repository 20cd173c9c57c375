"""Results as Markdown tables, JSON and PNG plots."""
