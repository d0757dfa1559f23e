"""The captioner interface shared by every VLM backend, its retry policy and its factory.

A backend only implements `_answer` (images + prompt → raw answers). Everything that must behave
the same whatever the backend lives here: loading images, parsing and validating answers,
retrying bad answers, keeping the valid variants of a partial answer (unless `strict_variants`),
and turning a hopeless image into a *failure result* instead of an exception, so that one bad image
never stops the ingest of an archive (the pipeline quarantines failures with their reason, and
stops the run when the captioner fails many images in a row: an outage, not bad images).
"""

from __future__ import annotations

import importlib
import inspect
import io
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image, UnidentifiedImageError

from rsrt.search.errors import ConfigError, RsrtError
from rsrt.search.schema import VARIANTS_PER_IMAGE, Variant

from ..assets import AssetError, AssetOptions, fetch_bytes, is_remote
from ..raster import RasterRead, RasterReadError, is_raster_path, rasterio_available, render
from .parse import CaptionFormatError, parse_partial_variants, parse_query_description, parse_variants
from .prompt import CAPTION_PROMPT, PROMPT_VERSION, QUERY_PROMPT, QUERY_PROMPT_VERSION

log = logging.getLogger(__name__)
_BOMB = Image.DecompressionBombError


class ImageLoadError(RsrtError):
    """An input image that is missing, corrupt or truncated; the message names the image.

    For a remote asset, `status` is the HTTP status (None for a timeout or a refused connection)
    and `transient` says whether a later run may well load it (5xx, 429, unreachable), so the
    pipeline quarantines it without marking it done.
    """

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


class CaptionerError(RsrtError):
    """A captioner that cannot work at all (model not loadable, bad options)."""


class CaptionerOutage(RsrtError):
    """The captioner failed many images in a row: the run stopped rather than quarantine the archive."""


@dataclass(frozen=True)
class ImageInput:
    """One image to caption: an id (kept in results) and one of a file path, the encoded bytes, or
    a remote `uri` (`http(s)://`, `s3://`, read with `assets`: timeout, retries, S3 endpoint).

    `raster` says how a raster file is rendered (bands, window, stretch, size: `rsrt.ingest.raster`);
    TIFF files are rendered that way even without it (defaults), other files are decoded by Pillow.
    A remote raster is read by range requests (only the overview or window needed), a remote
    JPEG/PNG is fetched whole.
    """

    image_id: str
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    raster: RasterRead | None = None
    uri: str | None = None
    assets: AssetOptions | None = None

    def __post_init__(self) -> None:
        given = sum(value is not None for value in (self.path, self.data, self.uri))
        if given != 1:
            raise ValueError(f"image {self.image_id!r}: give exactly one of path, data or uri")
        if self.uri is not None and not is_remote(self.uri):
            raise ValueError(f"image {self.image_id!r}: uri {self.uri!r} is not http(s):// or s3:// (give a path)")
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def from_source_uri(cls, image_id: str, source_uri: str, raster: RasterRead | None = None,
                        assets: AssetOptions | None = None) -> ImageInput:
        """A record's `source_uri` as an input: a remote URI stays one, `file://` and paths become paths."""
        if is_remote(source_uri):
            return cls(image_id=image_id, uri=source_uri, raster=raster, assets=assets)
        path = source_uri
        if source_uri.startswith("file://"):
            from urllib.parse import unquote, urlsplit

            path = unquote(urlsplit(source_uri).path)
        return cls(image_id=image_id, path=Path(path), raster=raster, assets=assets)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], image_id: str | None = None) -> ImageInput:
        """An input whose id defaults to the file stem (what the sources use too)."""
        path = Path(path)
        return cls(image_id=image_id or path.stem, path=path)

    def where(self) -> str:
        """Where the image comes from, for error messages."""
        if self.uri is not None:
            return self.uri
        return str(self.path) if self.path is not None else f"{len(self.data or b'')} bytes in memory"

    def read_bytes(self) -> bytes:
        """The encoded file content; `ImageLoadError` if the file cannot be read."""
        if self.data is not None:
            return self.data
        if self.uri is not None:
            try:
                return fetch_bytes(self.uri, self.assets)
            except AssetError as exc:
                raise ImageLoadError(f"image {self.image_id!r}: {exc}", status=exc.status,
                                     transient=exc.transient) from None
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ImageLoadError(f"image {self.image_id!r} ({self.path}) cannot be read: {reason}") from None

    def load(self) -> LoadedImage:
        """Decode fully as RGB, so a truncated file fails here with its name, not inside a model."""
        where = self.path if self.path is not None else self.uri
        if where is not None and (self.raster is not None or (is_raster_path(where) and rasterio_available())):
            try:  # multi-band, 16-bit, float, huge: read decimated and stretched, never whole
                return LoadedImage(source=self, image=render(where, self.raster, self.assets), format=None)
            except RasterReadError as exc:
                raise ImageLoadError(f"image {self.image_id!r} ({where}) cannot be rendered: {exc}") from None
            except AssetError as exc:
                raise ImageLoadError(f"image {self.image_id!r}: {exc}", status=exc.status,
                                     transient=exc.transient) from None
        raw = self.read_bytes()
        source = replace(self, uri=None, data=raw) if self.uri is not None else self  # fetched once, sent as is
        try:
            with Image.open(io.BytesIO(raw)) as opened:
                fmt = opened.format
                opened.load()  # Image.open is lazy: truncation only shows when pixels are read
                image = _to_rgb(opened)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, _BOMB) as exc:
            kind = "is not a readable image" if isinstance(exc, UnidentifiedImageError) else "is corrupt"
            detail = "" if isinstance(exc, UnidentifiedImageError) else f": {exc}"
            raise ImageLoadError(f"image {self.image_id!r} ({self.where()}) {kind}{detail}") from None
        return LoadedImage(source=source, image=image, format=fmt)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the VLM; 16-bit and float bands (common in remote sensing) are stretched, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - low) / (high - low or 1.0) * 255.0
        image = Image.fromarray(np.nan_to_num(scaled).astype("uint8"), mode="L")
    return image.convert("RGB")


@dataclass
class LoadedImage:
    """A decoded image with its input (backends that send files need the original bytes)."""

    source: ImageInput
    image: Image.Image
    format: str | None = None

    @property
    def image_id(self) -> str:
        return self.source.image_id


@dataclass
class Answer:
    """A backend's raw answer for one image: the text, or a reason retrying cannot help."""

    text: str | None = None
    error: str | None = None  # final: e.g. HTTP 400, or transport retries exhausted
    truncated: bool = False  # stopped by the token limit, not by the model
    # The error says nothing about this image (server down or overloaded, key or model refused):
    # a later run may well caption it, so it is not quarantined for good.
    transient: bool = False


@dataclass
class CaptionResult:
    """The outcome for one image: validated variants, or the reason it failed (for quarantine)."""

    image_id: str
    variants: list[Variant] | None = None
    error: str | None = None
    attempts: int = 0
    raw: str | None = field(default=None, repr=False)  # last raw answer, for debugging
    transient: bool = False  # the failure is the captioner's, not the image's (see `Answer.transient`)
    # or a remote asset that stayed unreachable (`ImageLoadError.transient`)
    status: int | None = None  # HTTP status of a remote asset that could not be loaded
    dropped: list[str] = field(default_factory=list)  # why variants of a kept partial answer were dropped

    @property
    def ok(self) -> bool:
        return self.variants is not None and self.error is None

    @property
    def partial(self) -> bool:
        """Kept with fewer than the five variants asked for (or with some dropped)."""
        return self.ok and bool(self.dropped)


class Captioner(ABC):
    """Writes the five RSRT variants of archive images, and one description of a query image.

    `caption` never raises because of one image: a bad answer is retried up to `max_attempts`
    times, then returned as a failed `CaptionResult` with its reason. Errors that concern every
    image (model not loadable, a bug) do raise.

    An answer with at least `min_variants` valid variants is kept as it is (the dropped ones are
    listed in `CaptionResult.dropped`): a retry costs a full VLM call and may do worse. With
    `strict_variants` only five valid variants are accepted, as the prompt asks.
    """

    kind: ClassVar[str] = "captioner"

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        prompt: str = CAPTION_PROMPT,
        prompt_version: str = PROMPT_VERSION,
        query_prompt: str = QUERY_PROMPT,
        query_prompt_version: str = QUERY_PROMPT_VERSION,
        min_variants: int = 1,
        strict_variants: bool = False,
    ) -> None:
        if max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {max_attempts}")
        if not 1 <= min_variants <= VARIANTS_PER_IMAGE:
            raise ConfigError(f"min_variants must be from 1 to {VARIANTS_PER_IMAGE}, got {min_variants}")
        self.max_attempts = max_attempts
        self.min_variants = min_variants
        self.strict_variants = strict_variants
        self.prompt = prompt
        self.prompt_version = prompt_version
        self.query_prompt = query_prompt
        self.query_prompt_version = query_prompt_version

    # -- what a backend provides -------------------------------------------------------------

    @property
    @abstractmethod
    def model_id(self) -> str:
        """The model as the user named it (path or hub id, or the server's model name)."""

    @property
    def chunk_size(self) -> int:
        """How many images are decoded and in memory at once."""
        return 8

    @abstractmethod
    def _answer(self, images: Sequence[LoadedImage], prompt: str, attempt: int) -> list[Answer]:
        """One raw answer per image, in order. `attempt` starts at 1; retries may sample."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends have nothing to free
        """Free the model or the connections; the captioner is not usable afterwards."""

    # -- the shared behaviour ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The backend kind, recorded as `CaptionerInfo.name`."""
        return self.kind

    @property
    def model(self) -> str:
        """Alias of `model_id` (the name `CaptionerInfo` uses)."""
        return self.model_id

    def caption(self, images: Sequence[ImageInput]) -> list[CaptionResult]:
        """One result per input image, in input order; failures carry their reason."""
        return [result for chunk in self.caption_chunks(images) for result in chunk]

    def caption_chunks(self, images: Sequence[ImageInput]) -> Iterator[list[CaptionResult]]:
        """`caption`, one chunk of results at a time, so a caller can stop early (an outage)."""
        for chunk in _chunks(list(images), max(1, self.chunk_size)):
            yield self._caption_chunk(chunk)

    def describe(self, image: ImageInput) -> Variant:
        """The description of a query image; raises `CaptionFormatError` if no attempt is valid."""
        loaded = image.load()
        reason = ""
        for attempt in range(1, self.max_attempts + 1):
            answer = self._answer([loaded], self.query_prompt, attempt)[0]
            if answer.error is not None:
                raise CaptionerError(f"query image {image.image_id!r}: {answer.error}")
            try:
                return parse_query_description(answer.text or "")
            except CaptionFormatError as exc:
                reason = _reason(exc, answer)
                log.warning("query %r attempt %d/%d: %s", image.image_id, attempt, self.max_attempts, exc)
        raise CaptionFormatError(
            f"no valid description of query image {image.image_id!r} "
            f"after {self.max_attempts} attempts: {reason}"
        )

    def _caption_chunk(self, chunk: Sequence[ImageInput]) -> list[CaptionResult]:
        ordered = [CaptionResult(image_id=item.image_id) for item in chunk]
        pending: list[tuple[LoadedImage, CaptionResult]] = []
        for item, result in zip(chunk, ordered, strict=True):
            try:
                pending.append((item.load(), result))
            except ImageLoadError as exc:
                result.error = str(exc)
                result.transient = exc.transient  # an unreachable asset: the next run tries again
                result.status = exc.status
                log.warning("%s", exc)
        for attempt in range(1, self.max_attempts + 1):
            if not pending:
                break
            answers = self._answer([loaded for loaded, _ in pending], self.prompt, attempt)
            if len(answers) != len(pending):
                raise CaptionerError(f"{self.name} returned {len(answers)} answers for {len(pending)} images")
            still: list[tuple[LoadedImage, CaptionResult]] = []
            for (loaded, result), answer in zip(pending, answers, strict=True):
                result.attempts = attempt
                if answer.text is not None:
                    result.raw = printable(answer.text)
                if answer.error is not None:
                    result.error = printable(answer.error)
                    result.transient = answer.transient
                    log.warning("image %r failed: %s", loaded.image_id, answer.error)
                    continue
                try:
                    if self.strict_variants:
                        result.variants = parse_variants(answer.text or "")
                    else:
                        parsed = parse_partial_variants(answer.text or "", min_variants=self.min_variants)
                        result.variants, result.dropped = parsed.variants, parsed.dropped
                        if parsed.dropped:
                            log.warning("%r: kept %d variants (%s)", loaded.image_id, len(parsed.variants),
                                        "; ".join(parsed.dropped))
                    result.error = None
                except CaptionFormatError as exc:
                    result.error = _reason(exc, answer)
                    log.warning("%r attempt %d/%d: %s", loaded.image_id, attempt, self.max_attempts, exc)
                    still.append((loaded, result))
            pending = still
        for _, result in pending:
            result.error = f"no valid answer after {result.attempts} attempts: {result.error}"
        return ordered

    def __enter__(self) -> Captioner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def printable(text: str) -> str:
    """`text` with lone surrogates as `\\udfff` escapes: a model's answer may hold them, files may not."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _reason(exc: CaptionFormatError, answer: Answer) -> str:
    text = str(exc)
    if answer.truncated:
        text += " (the answer was cut off by the token limit; raise max_new_tokens/max_tokens)"
    return text


def _chunks(items: list[ImageInput], size: int) -> Iterator[list[ImageInput]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- registry / factory ------------------------------------------------------------------------

# Lazy targets: importing the package must not import torch or httpx.
_REGISTRY: dict[str, str | Callable[..., Captioner]] = {
    "transformers": "rsrt.ingest.captioners.transformers_vlm:TransformersCaptioner",
    "openai": "rsrt.ingest.captioners.openai_http:OpenAICompatibleCaptioner",
}


def register_captioner(kind: str, factory: str | Callable[..., Captioner]) -> None:
    """Add a backend ("module:Class" or a callable); tests and plugins use this."""
    _REGISTRY[kind] = factory


def captioner_kinds() -> list[str]:
    return sorted(_REGISTRY)


def _resolve(kind: str) -> Callable[..., Captioner]:
    target = _REGISTRY[kind]
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"captioner {kind!r} needs a package that is not installed ({exc.name}); "
                "install rsrt-search[ml] for 'transformers' or rsrt-search[http] for 'openai'"
            ) from None
        target = getattr(module, attr)
    return target


def _accepted_options(factory: Callable[..., Captioner]) -> list[str] | None:
    """Option names a factory takes (a backend's `**options` are the base class's); None: any."""
    names: list[str] = []
    open_ended = False
    for param in inspect.signature(factory).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            open_ended = True
        elif param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            names.append(param.name)
    if open_ended:
        if not (isinstance(factory, type) and issubclass(factory, Captioner)):
            return None
        names += [name for name in inspect.signature(Captioner.__init__).parameters if name != "self"]
    return names


def make_captioner(kind: str, **options: Any) -> Captioner:
    """Build a captioner by kind ("transformers" or "openai") with that backend's options.

    `model` names the model for every backend (for "transformers" it is its `model_path`).
    """
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown captioner kind {kind!r}; valid kinds: {', '.join(captioner_kinds())}")
    factory = _resolve(kind)
    accepted = _accepted_options(factory)
    if "model" in options and accepted is not None and "model" not in accepted and "model_path" in accepted:
        options["model_path"] = options.pop("model")
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"captioner {kind!r} has no option {', '.join(map(repr, unknown))}; "
                f"accepted options: {', '.join(accepted)}"
            )
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"captioner {kind!r}: {exc}") from None
    return factory(**options)


def captioner_from_flags(kind: str, *, model: str | None, base_url: str | None = None, concurrency: int = 4,
                         device: str = "auto", dtype: str = "auto", batch_size: int = 8,
                         timeout: float | None = None, retries: int | None = None, max_tokens: int | None = None,
                         image_size: int | None = None, min_variants: int = 1,
                         strict_variants: bool = False) -> Captioner:
    """The captioner the command-line flags ask for (--captioner, --model, --vlm-url, ...).

    Each backend takes the options that concern it ("openai": model, base_url, concurrency,
    --vlm-timeout, --vlm-retries, --vlm-image-size; "transformers": model, device, dtype, batch_size);
    --vlm-max-tokens, --min-variants and --strict-variants go to both. None: the backend's default.
    A missing --model or --vlm-url, or an option the backend has no use for, is a ConfigError
    naming the flag.
    """
    if not model:
        raise ConfigError(f"--captioner {kind} needs --model")
    common: dict[str, Any] = {"min_variants": min_variants, "strict_variants": strict_variants}
    if kind == "openai":
        if not base_url:
            raise ConfigError("--captioner openai needs --vlm-url (or RSRT_VLM_URL)")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"--vlm-timeout must be more than 0 seconds, got {timeout:g}")
        if image_size is not None and image_size < 16:
            raise ConfigError(f"--vlm-image-size must be at least 16 pixels, got {image_size}")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"--vlm-max-tokens must be at least 1, got {max_tokens}")
        given = {"timeout": timeout, "max_retries": retries, "max_tokens": max_tokens, "max_image_side": image_size}
        if retries is not None and retries < 0:
            raise ConfigError(f"--vlm-retries must be 0 or more, got {retries}")
        options = {name: value for name, value in given.items() if value is not None}
        return make_captioner("openai", model=model, base_url=base_url, concurrency=concurrency, **options, **common)
    unused = [flag for flag, value in (("--vlm-timeout", timeout), ("--vlm-retries", retries),
                                       ("--vlm-image-size", image_size)) if value is not None]
    if unused:
        raise ConfigError(f"{', '.join(unused)} only apply to --captioner openai")
    if max_tokens is not None:
        if max_tokens < 1:
            raise ConfigError(f"--vlm-max-tokens must be at least 1, got {max_tokens}")
        common["max_new_tokens"] = max_tokens
    return make_captioner(kind, model=model, device=device, dtype=dtype, batch_size=batch_size, **common)


__all__ = [
    "Answer",
    "CaptionResult",
    "Captioner",
    "CaptionerError",
    "CaptionerOutage",
    "ImageInput",
    "ImageLoadError",
    "LoadedImage",
    "captioner_from_flags",
    "captioner_kinds",
    "make_captioner",
    "printable",
    "register_captioner",
]
