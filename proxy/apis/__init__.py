"""API adapters: one per OpenAI API shape the moderation pipeline serves (DESIGN: issue 11).

An adapter knows its API's bodies and events (what the user sent, what the model answered,
how a block looks, which upstream path serves it); the pipeline never does.
"""
