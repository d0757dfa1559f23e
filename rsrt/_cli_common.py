"""Pieces every `rsrt` sub-command shares: error handling and connection options."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click
import opensearchpy

from rsrt.search.errors import ClusterUnavailable, RsrtError, from_opensearch


def _fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """User errors print one line and exit non-zero: no stack trace for things the user can fix."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RsrtError as exc:
            _fail(str(exc), exc.exit_code)
        except opensearchpy.OpenSearchException as exc:  # one that no lower layer mapped: the same table
            error = from_opensearch(exc)
            resume = "; run the same command again to resume" if isinstance(error, ClusterUnavailable) else ""
            _fail(f"{error}{resume}", error.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted; run the same command again to resume", fg="yellow", err=True)
            sys.exit(130)

    return wrapper


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--url/--user/--password/--ca-file/--client-cert/--client-key/--insecure; RSRT_OPENSEARCH_* as defaults."""
    options = [
        click.option("--url", envvar="RSRT_OPENSEARCH_URL", help="OpenSearch URL(s), comma-separated "
                     "[env RSRT_OPENSEARCH_URL; default the local node http://127.0.0.1:9200]"),
        click.option("--user", envvar="RSRT_OPENSEARCH_USER", help="basic-auth user [env RSRT_OPENSEARCH_USER]"),
        click.option("--password", envvar="RSRT_OPENSEARCH_PASSWORD", show_envvar=False,
                     help="basic-auth password; prefer env RSRT_OPENSEARCH_PASSWORD (never printed)"),
        click.option("--ca-file", envvar="RSRT_OPENSEARCH_CA_FILE", type=click.Path(dir_okay=False),
                     help="CA bundle for TLS [env RSRT_OPENSEARCH_CA_FILE]"),
        click.option("--client-cert", envvar="RSRT_OPENSEARCH_CLIENT_CERT", type=click.Path(dir_okay=False),
                     help="PEM client certificate to authenticate with instead of a password "
                          "[env RSRT_OPENSEARCH_CLIENT_CERT]"),
        click.option("--client-key", envvar="RSRT_OPENSEARCH_CLIENT_KEY", type=click.Path(dir_okay=False),
                     help="its PEM private key [env RSRT_OPENSEARCH_CLIENT_KEY]"),
        click.option("--insecure", is_flag=True, default=False,
                     help="do not verify TLS certificates (verification is on by default)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def encoder_backend_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--encoder-backend, passed to the command as `encoder_backend` (env RSRT_ENCODER_BACKEND, else torch).

    The backend only changes speed, not the vectors' meaning: an index records its encoder by name.
    """
    from rsrt.search.encoder import BACKENDS

    return click.option("--encoder-backend", type=click.Choice(BACKENDS), envvar="RSRT_ENCODER_BACKEND",
                        default="torch", show_default=True,
                        help="how the encoder runs on this machine: torch, or int8 / ONNX Runtime for faster "
                             "CPU encoding with near-identical vectors [env RSRT_ENCODER_BACKEND]")(func)


def settings_from(kwargs: dict[str, Any]):
    """Pop the connection options out of a command's kwargs into ConnectionSettings."""
    from rsrt.search.config import ConnectionSettings

    insecure = kwargs.pop("insecure", False)
    return ConnectionSettings.resolve(
        url=kwargs.pop("url", None),
        user=kwargs.pop("user", None),
        password=kwargs.pop("password", None),
        ca_file=kwargs.pop("ca_file", None),
        verify_certs=False if insecure else None,
        client_cert=kwargs.pop("client_cert", None),
        client_key=kwargs.pop("client_key", None),
    )
