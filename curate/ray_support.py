"""Ray, imported lazily for the optional ``ray`` engines (dedup, score)."""

from __future__ import annotations

from thresher.errors import MissingDependencyError


def import_ray():
    """Ray with Ray Data, or a one-line error with the install hint."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            "the ray engine needs Ray Data; pip install 'thresher[ray]'"
        ) from err
    return ray
