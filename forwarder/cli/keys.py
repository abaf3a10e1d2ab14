"""``forwarder keys generate``: a signing key pair made locally, no website involved.

Writes ``NAME.private.jwk.json`` (mode 0600, never overwritten without ``--force``) and
``NAME.public.jwk.json``; ``kid`` is the key's RFC 7638 SHA-256 thumbprint (what Okta's
guide calls "Key ID: SHA-256"), with ``use: sig`` and ``alg`` set. The public JWK is
what ``forwarder okta create-app --public-key`` registers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from forwarder.cli.common import EXIT_OK, EXIT_USAGE
from forwarder.okta.keys import ALGORITHMS

__all__ = ["register"]


def _cmd_generate(args: argparse.Namespace) -> int:
    from forwarder.okta.provision import ProvisionError, write_key_pair  # noqa: PLC0415

    if args.bits is not None and not args.alg.startswith("RS"):
        message = f"--bits applies to RSA keys only; {args.alg} uses a fixed curve"
        return _usage_error(args, message)
    try:
        pair = write_key_pair(
            Path(args.out),
            args.name,
            alg=args.alg,
            bits=args.bits or 2048,
            force=args.force,
        )
    except ProvisionError as exc:
        return _usage_error(args, str(exc))
    public = pair.public_jwk()
    if args.json:
        document = {
            "ok": True,
            "kid": pair.key.kid,
            "alg": pair.key.alg,
            "private_key_file": str(pair.private_file),
            "public_key_file": str(pair.public_file),
            "public_jwk": public,
        }
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(json.dumps(public, indent=2))
    print(f"private key  {pair.private_file}  (mode 0600: keep it secret, never upload it)")
    print(f"public key   {pair.public_file}")
    print(f"kid          {pair.key.kid}  (RFC 7638 SHA-256 thumbprint)")
    print(f"next: forwarder okta create-app --org URL --name NAME --public-key {pair.public_file}")
    return EXIT_OK


def _usage_error(args: argparse.Namespace, message: str) -> int:
    if args.json:
        print(json.dumps({"ok": False, "error": {"message": message}}, indent=2))
    else:
        print(f"forwarder: {message}", file=sys.stderr)
    return EXIT_USAGE


def register(sub: Any) -> None:
    """Add ``keys generate`` to the ``forwarder`` parser."""
    keys = sub.add_parser("keys", help="signing keys for Okta service apps")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    gen = keys_sub.add_parser(
        "generate",
        help="write a new private key (0600) and its public JWK",
        description=(
            "Write a new signing key pair, made locally: NAME.private.jwk.json (mode 0600) "
            "and NAME.public.jwk.json. kid is the RFC 7638 SHA-256 thumbprint (Okta's "
            "'Key ID: SHA-256')."
        ),
    )
    gen.add_argument("--out", required=True, metavar="DIR", help="directory for the key files")
    gen.add_argument("--name", default="forwarder", help="file name prefix (default %(default)s)")
    gen.add_argument("--alg", choices=ALGORITHMS, default="RS256", help="default %(default)s")
    gen.add_argument(
        "--bits", type=int, choices=(2048, 3072, 4096), help="RSA key size (default 2048)"
    )
    gen.add_argument("--force", action="store_true", help="overwrite an existing private key")
    gen.add_argument("--json", action="store_true", help="one JSON document on stdout")
    gen.set_defaults(func=_cmd_generate)
