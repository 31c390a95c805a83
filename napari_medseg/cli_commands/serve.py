"""`medseg serve`: one GPU for the whole lab (sessions, warm models, a bearer token; see the README)."""
from __future__ import annotations

import sys

from ..errors import MedsegError


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; reach it through an SSH "
                        "tunnel or a TLS reverse proxy, see the README)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    parser.add_argument("--token-file", help="file holding the bearer token (made with mode 0600 if missing; "
                        "default MEDSEG_HOME/server/token)")
    parser.add_argument("--max-sessions", type=int, default=8, help="open sessions at most (default 8)")
    parser.add_argument("--devices", default="auto",
                        help="devices to run on, one queue each: auto, cpu, CUDA indices (0,1) or names (cuda:0)")
    parser.add_argument("--idle-timeout", type=float, default=1800.0,
                        help="seconds without a request before a session is closed (default 1800)")
    parser.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest image upload (default 2048 MB)")
    parser.add_argument("--preload", action="append", default=[], help="model id to load at start (repeatable)")


def run(args) -> int:
    from ..models.registry import get_card
    from ..server.auth import ensure_token

    if not 0 <= args.port <= 65535:
        raise MedsegError(f"--port must be 0..65535, not {args.port}")
    if args.max_sessions < 1:
        raise MedsegError(f"--max-sessions must be at least 1, not {args.max_sessions}")
    if not args.idle_timeout > 0:
        raise MedsegError(f"--idle-timeout must be a positive number of seconds, not {args.idle_timeout:g}")
    if not args.max_upload_mb > 0:
        raise MedsegError(f"--max-upload-mb must be positive, not {args.max_upload_mb:g}")
    for model in args.preload:
        get_card(model)
    _check_address(args.host, args.port)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] or ["auto"]
    token, path = ensure_token(args.token_file)
    from ..server.app import ServerConfig, serve

    config = ServerConfig(token=token, devices=devices, max_sessions=args.max_sessions, idle_timeout=args.idle_timeout,
                          max_upload_bytes=int(args.max_upload_mb * 2**20), preload=args.preload)

    def started(url: str) -> None:
        print(f"medseg server on {url} (devices: {', '.join(devices)}); token in {path}", flush=True)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print("medseg: warning: listening beyond this machine without TLS; put a TLS reverse proxy in front",
                  file=sys.stderr, flush=True)

    serve(config, host=args.host, port=args.port, on_started=started)
    return 0


def _check_address(host: str, port: int) -> None:
    """Refuse, in one line and before any model loads, an address this machine cannot listen on."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as exc:
        raise MedsegError(f"Cannot listen on {host}:{port} ({exc.strerror or exc})") from None
