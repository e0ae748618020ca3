"""Steps of the flaky-api example; the code lives in examples.shop."""

from examples.shop import cached_answer, flaky_call

__all__ = ["cached_answer", "flaky_call"]
