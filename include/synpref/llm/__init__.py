"""The LLM layer: OpenAI-compatible annotator endpoints, preference-aware judging, attribute generation."""
