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


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (``HOST:6379`` from ``ray start --head``, ``auto``,
    or ``ray://HOST:10001``) unless this process is connected already. Without a call, Ray's own
    defaults apply at first use: env ``RAY_ADDRESS``, else the cluster ``ray start`` began on
    this machine, else a new local instance."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address)
