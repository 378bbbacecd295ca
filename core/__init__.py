"""The bottom layer: settings, the injectable clock, the HTTP retry policy and the small
helpers every package shares. It imports no other package of the project, so any of them
may import it (tests/test_layers.py holds the rule)."""
