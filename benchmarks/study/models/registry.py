"""A name → backbone registry, one per framework, open to user backbones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from benchmarks.study.config import StudyConfigError

# The weights label of a randomly initialised run, so it is never reported as ImageNet.
RANDOM_INIT = "none (random init)"
ModelT = TypeVar("ModelT")


class WeightsUnavailableError(RuntimeError):
    """The requested pretrained weights cannot be loaded (e.g. no network)."""


def build_imagenet(
    build: Callable[[], ModelT], name: str, source: str, offline_file: str
) -> ModelT:
    """``build()`` a backbone with ImageNet weights; a failed download says what to do instead.

    Args:
        build: Builds the backbone, fetching its ImageNet weights.
        name: Backbone name.
        source: Where the weights come from, e.g. ``"through keras.applications"``.
        offline_file: What a ``--weights PATH`` file must be for this framework.

    Raises:
        WeightsUnavailableError: The loader failed (no network, no cached file).
    """
    try:
        return build()
    except Exception as err:  # loaders fail with a bare Exception, URLError, OSError, hub errors
        raise WeightsUnavailableError(
            f"could not load ImageNet weights for {name} {source} ({type(err).__name__}: {err}). "
            f"Without network access use --weights PATH ({offline_file}) or --weights none "
            "(random init)"
        ) from err


class Named(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def min_size(self) -> int: ...


BackboneT = TypeVar("BackboneT", bound=Named)


class BackboneRegistry(Generic[BackboneT]):
    """Backbone descriptions of one framework, by name.

    Args:
        framework: Framework name used in error messages (e.g. ``"Keras"``).
    """

    def __init__(self, framework: str) -> None:
        self.framework = framework
        self._backbones: dict[str, BackboneT] = {}

    def register(self, backbone: BackboneT, *, replace: bool = False) -> None:
        """Make ``backbone`` available to the study under ``backbone.name``.

        Args:
            backbone: The backbone description.
            replace: Allow overriding an existing name. Defaults to False.

        Raises:
            ValueError: The name is taken and ``replace`` is False.
        """
        if backbone.name in self._backbones and not replace:
            raise ValueError(
                f"backbone {backbone.name!r} is already registered; "
                "pass replace=True to override it"
            )
        self._backbones[backbone.name] = backbone

    def names(self) -> list[str]:
        """Names of every registered backbone, sorted."""
        return sorted(self._backbones)

    def get(self, name: str) -> BackboneT:
        """The registered backbone ``name``.

        Raises:
            StudyConfigError: Unknown name (the message lists the known ones).
        """
        if name not in self._backbones:
            raise StudyConfigError(
                f"unknown {self.framework} backbone {name!r}; choose from {self.names()}"
            )
        return self._backbones[name]

    def get_for_size(self, name: str, image_size: int) -> BackboneT:
        """The registered backbone ``name``, checked to accept ``image_size`` pixels.

        Raises:
            StudyConfigError: Unknown name, or an image smaller than the backbone's minimum.
        """
        backbone = self.get(name)
        if image_size < backbone.min_size:
            raise StudyConfigError(
                f"--image-size {image_size} is too small for {name}; "
                f"it needs >= {backbone.min_size}"
            )
        return backbone
