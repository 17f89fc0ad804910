"""M3T synthesis: prompts, generators, response parsing, the content-addressed cache, the runner."""
