"""Backbone loading, special tokens, the offline tiny backbone and its tokenizer and processor."""
