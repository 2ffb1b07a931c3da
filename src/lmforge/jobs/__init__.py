"""The wiring layer: one module per command, each returning what it did."""
