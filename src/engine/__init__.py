"""Streaming decision engine for e-commerce.

Events flow from Kafka through Faust agents; state and models live in Redis. The package exposes
no public Python API beyond the ``engine`` command line; see README.md.
"""

__version__ = "0.1.0"
