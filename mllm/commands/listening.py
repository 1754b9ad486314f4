"""The address options of the commands that listen (``mllm serve``, ``mllm web``): loopback by
default, and a warning when told to listen further."""

from __future__ import annotations

import argparse
import ipaddress


def add_address_arguments(parser: argparse.ArgumentParser, *, port: int) -> None:
    """``--host`` (default 127.0.0.1: only this machine can connect) and ``--port``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=port)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
