"""Broker URLs as both commands take them: `mqtt://HOST:PORT`, `mqtts://HOST:PORT` (TLS).

The agent also takes a comma-separated list of them, the nodes of one cluster
(`parse_broker_urls`): one scheme and one set of credentials for all, no node twice.

Pure parsing, shared by the agent and the gateway. A URL may carry `user:password@`; it is
accepted, but the password is then visible in the process list, so callers warn and prefer
a password file or the environment. `redacted()` is the form fit for logs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """A parsed broker URL; `password` never appears in `repr`."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def redacted(self) -> str:
        """The URL without credentials, for logs and error messages."""
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def parse_broker_url(url: str, *, bare_host: bool = False) -> BrokerUrl:
    """`mqtt[s]://[user[:password]@]HOST[:PORT]`; ValueError naming what is wrong.

    `bare_host`: `HOST:PORT` without a scheme means `mqtt://`.
    """
    text = url if "://" in url or not bare_host else f"mqtt://{url}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    shown = _redact(url)
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker URL {shown!r} must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"broker URL {shown!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {shown!r} has a path, query or fragment")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ValueError(f"broker URL {shown!r} has a bad port") from exc
    return BrokerUrl(
        host=parts.hostname,
        port=port,
        tls=scheme in ("mqtts", "ssl"),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def parse_broker_urls(text: str, *, bare_host: bool = False) -> list[BrokerUrl]:
    """`URL[,URL...]`, each as `parse_broker_url` takes it; ValueError naming the URL at fault.

    The URLs are nodes of one cluster, tried in order by one client: they share the scheme
    (TLS or not) and the credentials, and none is given twice.
    """
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError("no broker URL given")
    urls: list[BrokerUrl] = []
    for index, item in enumerate(items, 1):
        if not item:
            raise ValueError(f"broker URL #{index} of the list is empty")
        url = parse_broker_url(item, bare_host=bare_host)
        shown = _redact(item)
        if urls and (url.tls, url.username, url.password) != (
            urls[0].tls,
            urls[0].username,
            urls[0].password,
        ):
            raise ValueError(
                f"broker URL {shown!r} differs from the first in its scheme or credentials"
                " (the brokers of one list are nodes of one cluster)"
            )
        if any((u.host, u.port) == (url.host, url.port) for u in urls):
            raise ValueError(f"broker URL {shown!r} is given twice")
        urls.append(url)
    return urls


def _redact(url: str) -> str:
    """`url` with any `user:password@` replaced, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@", 0, rest.find("/") if "/" in rest else len(rest))
    if at < 0:
        return url
    return f"{scheme}{sep}***@{rest[at + 1 :]}"


def add_credential_options(parser: argparse.ArgumentParser, username_help: str) -> None:
    """`--mqtt-username`, `--mqtt-password-file`, `--mqtt-ca-file`, as both commands take them."""
    parser.add_argument("--mqtt-username", default=None, help=username_help)
    parser.add_argument(
        "--mqtt-password-file",
        type=Path,
        default=None,
        help="file holding the broker password (env EDGEMART_MQTT_PASSWORD[_FILE])",
    )
    parser.add_argument(
        "--mqtt-ca-file",
        type=Path,
        default=None,
        help="CA bundle for TLS to the broker (implies TLS; or use an mqtts:// URL)",
    )
