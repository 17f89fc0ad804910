"""muco: universal multimodal embeddings by multi-turn contrastive learning."""
