"""Policies: strict file schema, compilation into immutable runtime objects, hot reload."""
