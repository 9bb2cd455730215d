"""proxy: guardline's OpenAI-compatible gateway."""
