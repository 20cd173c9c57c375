"""Corpora: sources of documents, tokenizers, the packing contract, a synthetic corpus."""
