"""Anticipatory stocking: demand forecasts, returning customers, stock-move signals."""
