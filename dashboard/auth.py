"""Who is reviewing: sign-in when the dashboard is served beyond this computer, and the reviewer's name.

On 127.0.0.1 (`make run`'s default, and .streamlit/config.toml's server.address)
nobody signs in: the reviewer's name is asked once per browser session, in the
sidebar, and recorded with each verdict.

Served beyond it (server.address anything else, and unset, which binds every
interface), the dashboard requires sign-in before it shows anything, and the
signed-in user is the reviewer. Two ways, configured in .streamlit/secrets.toml:

- OIDC with Streamlit's st.login: an [auth] section (redirect_uri, cookie_secret,
  client_id, client_secret, server_metadata_url; or one [auth.<provider>] table
  per identity provider). The reviewer is the token's name (else email).
- A team password, for a small team without an identity provider:
      [dashboard]
      password_hash = "pbkdf2_sha256$600000$<salt hex>$<hash hex>"
  made by `python -m dashboard.auth hash-password`. The reviewer types a name
  and the password.

With neither, the app says how to configure one and shows nothing else, unless
the environment has DDSM_ALLOW_OPEN=1 (`ALLOW_OPEN=1 make run`): then it runs
open and names are self-declared. `python -m dashboard.auth check-serve --host H`
is the same rule for `make run`, which calls it before starting Streamlit.
"""
from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import os
import secrets as token_source
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path

import streamlit as st

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
ALLOW_OPEN_ENV = "DDSM_ALLOW_OPEN"
PASSWORD_SECTION, PASSWORD_KEY = "dashboard", "password_hash"
SCHEME = "pbkdf2_sha256"
ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
REVIEWER = "_reviewer"  # the self-declared name (localhost, or open)
PASSWORD_USER = "_password_user"  # who signed in with the team password
HOW_TO = ("Configure sign-in in .streamlit/secrets.toml: either OIDC for st.login (an [auth] section with "
          "redirect_uri, cookie_secret, client_id, client_secret and server_metadata_url) or a team password "
          "([dashboard] password_hash = \"...\", made by: python -m dashboard.auth hash-password). "
          "Or serve on 127.0.0.1 only, or set ALLOW_OPEN=1 to serve without sign-in anyway.")


# ---------------------------------------------------------------- rules (no Streamlit session needed)

def is_local(address: str | None) -> bool:
    """Served to this computer only: a loopback address or a unix socket. Unset means every interface."""
    if not address:
        return False
    address = str(address).strip().strip("[]").lower()
    return address in LOCAL_HOSTS or address.startswith("127.") or address.startswith("unix://")


def allow_open(environ: Mapping[str, str] = os.environ) -> bool:
    return str(environ.get(ALLOW_OPEN_ENV, "")).strip().lower() in ("1", "true", "yes", "on")


def oidc_providers(secrets: Mapping) -> list[str | None]:
    """The st.login providers configured: None for a single [auth] client, else the [auth.<name>] tables."""
    section = secrets.get("auth")
    if not isinstance(section, Mapping) or not section:
        return []
    named = [name for name, value in section.items() if isinstance(value, Mapping)]
    return ([None] if "client_id" in section else []) + named


def password_hash(secrets: Mapping) -> str | None:
    section = secrets.get(PASSWORD_SECTION)
    value = section.get(PASSWORD_KEY) if isinstance(section, Mapping) else None
    return str(value) if value else None


def serve_problem(host: str | None, secrets: Mapping, environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the dashboard must not be served on `host` as configured, or None when it may."""
    if is_local(host) or oidc_providers(secrets) or password_hash(secrets) or allow_open(environ):
        return None
    where = f"on {host}" if host else "on every network interface"
    return (f"The dashboard would be served {where}, beyond this computer, and anyone who can reach it could "
            f"record verdicts, but no sign-in is configured. {HOW_TO}")


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """'pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>' of a password (random 16-byte salt)."""
    if not password:
        raise ValueError("the password is empty")
    salt = salt or token_source.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{SCHEME}${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a hash_password() string (False for a malformed one), in constant time."""
    try:
        scheme, iterations, salt, expected = stored.split("$")
        if scheme != SCHEME:
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), bytes.fromhex(salt), int(iterations))
        return hmac.compare_digest(digest, bytes.fromhex(expected))
    except (ValueError, AttributeError):
        return False


def read_secrets_files(paths) -> dict:
    """The merged secrets of the toml files Streamlit reads (later files win), for the check before start."""
    merged: dict = {}
    for path in paths:
        try:
            merged |= tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise SystemExit(f"error: cannot read {path}: {error}") from None
    return merged


# ---------------------------------------------------------------- in the app

def _secrets() -> Mapping:
    try:
        return st.secrets.to_dict()
    except FileNotFoundError:  # no secrets.toml anywhere
        return {}


def signed_in_user() -> str | None:
    """The signed-in user's name (team password or OIDC), or None."""
    name = st.session_state.get(PASSWORD_USER)
    if name:
        return name
    if st.user.get("is_logged_in"):
        return str(st.user.get("name") or st.user.get("email") or st.user.get("sub") or "signed-in user")
    return None


def reviewer() -> str | None:
    """Who records verdicts in this browser session: the signed-in user, else the name typed in the sidebar."""
    return signed_in_user() or st.session_state.get(REVIEWER) or None


def gate() -> None:
    """First thing on every page: beyond localhost, sign-in or a sentence saying how to configure it, then stop."""
    address = st.get_option("server.address")
    if is_local(address) or signed_in_user():
        return
    secrets = _secrets()
    providers, stored = oidc_providers(secrets), password_hash(secrets)
    if not providers and not stored:
        if allow_open():
            return
        st.error(serve_problem(address, secrets, environ={}))
        st.stop()
    st.title("Sign in")
    st.caption("This dashboard is shared beyond this computer: sign in to review; your name is recorded "
               "with every verdict.")
    for provider in providers:
        label = f"Sign in with {provider}" if provider else "Sign in"
        if st.button(label, key=f"login_{provider or 'default'}", type="primary"):
            st.login(provider) if provider else st.login()
    if stored:
        _password_form(stored)
    st.stop()


def _password_form(stored: str) -> None:
    with st.form("password_sign_in"):
        name = st.text_input("Your name", key="sign_in_name", help="recorded with each verdict you give")
        password = st.text_input("Team password", type="password", key="sign_in_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    if not name.strip():
        st.error("Type your name: it is recorded with each verdict.")
    elif verify_password(password, stored):
        st.session_state[PASSWORD_USER] = name.strip()
        st.rerun()
    else:
        time.sleep(1)  # a little friction for guessing
        st.error("Wrong password.")


def reviewer_panel() -> None:
    """In the sidebar: who is reviewing (and Sign out), or the field asking the name once per session."""
    signed_in = signed_in_user()
    if signed_in:
        st.sidebar.caption(f"Reviewer: signed in as **{signed_in}**; verdicts are recorded under this name.")
        if st.sidebar.button("Sign out", key="sign_out"):
            if st.session_state.pop(PASSWORD_USER, None) is None:
                st.logout()
            st.rerun()
        return
    st.session_state["reviewer_input"] = st.session_state.get(REVIEWER, "")
    st.sidebar.text_input("Reviewer (your name)", key="reviewer_input", on_change=_take_name, placeholder="e.g. Dr. Rivera",
                          help="asked once per browser session and recorded with each verdict you give")


def _take_name() -> None:
    st.session_state[REVIEWER] = st.session_state["reviewer_input"].strip()


# ---------------------------------------------------------------- python -m dashboard.auth

def _hash_password_command(_args) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Team password: ")
        if password != getpass.getpass("Again: "):
            print("error: the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("error: the password is empty", file=sys.stderr)
        return 1
    print("# add to .streamlit/secrets.toml (never commit that file):")
    print(f"[{PASSWORD_SECTION}]")
    print(f'{PASSWORD_KEY} = "{hash_password(password)}"')
    return 0


def _check_serve_command(args) -> int:
    problem = serve_problem(args.host, read_secrets_files(st.get_option("secrets.files")))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.auth", description="the dashboard's sign-in helpers")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("hash-password", help="print a password hash for .streamlit/secrets.toml "
                                              "(reads the password from the terminal, or one line of stdin)") \
        .set_defaults(handler=_hash_password_command)
    check = commands.add_parser("check-serve", help="refuse to serve beyond localhost without sign-in "
                                                    "(make run calls it; DDSM_ALLOW_OPEN=1 allows it)")
    check.add_argument("--host", default=None, help="the address Streamlit will listen on")
    check.set_defaults(handler=_check_serve_command)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
