"""Image sources, safe decoding and the procedural scene world."""
