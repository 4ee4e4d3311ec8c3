from lstmbench_backends.reference.reference import NumpyReference

__all__ = ["NumpyReference"]
