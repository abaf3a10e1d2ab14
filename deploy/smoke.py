#!/usr/bin/env python3
"""Build the image and prove it works the way deploy/ runs it, with podman or Docker.

    .venv/bin/python deploy/smoke.py [--engine podman|docker] [--image TAG] [--no-build]

Runs the image with a read-only root filesystem (no tmpfs either), a named volume for the
store, the secrets mounted read-only, and the image's own config (deploy/container/
forwarder.toml) pointed through environment overrides at a sandbox Okta org on the host
network. Checks that: detectors without a token get 401; signals answered 202 reach the
org; /healthz answers; the image's HEALTHCHECK passes; the daemon runs as UID 10001;
nothing outside the volume is writable; SIGTERM stops it with exit 0 well inside the stop
grace; the store is in the volume. Needs the forwarder package importable (the sandbox and
provisioning), i.e. run it with the project's venv. Exit 0 when everything held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UID = 10001
STOP_GRACE_S = 30  # what deploy/ gives the container (daemon drain: 10 s)
STOP_LIMIT_S = 15.0  # an idle daemon must be well inside the drain plus shutdown
SIGNALS = 300
WINDOW_S = 5  # the budget window on both sides, shortened from Okta's 60 s to keep this quick
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class SmokeError(Exception):
    """A check failed; the message says which."""


def log(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Engine:
    """The container CLI (podman or docker) and the flags this host needs."""

    def __init__(self, path: str) -> None:
        self.path = path
        version = subprocess.run(  # noqa: S603 (the engine the operator chose)
            [path, "--version"], capture_output=True, text=True, check=True
        ).stdout
        self.is_podman = "podman" in version.lower()

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603 (fixed arguments built here)
            [self.path, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise SmokeError(f"{' '.join(args[:2])} failed: {result.stderr.strip()}")
        return result

    def run_flags(self) -> list[str]:
        # Podman's default nofile/nproc limits are refused on some hosts; crun fails on
        # cgroup v1 layouts where runc works. Both are harmless elsewhere.
        flags = ["--ulimit", "nofile=8192:8192", "--ulimit", "nproc=8192:8192"]
        if self.is_podman:
            if shutil.which("runc"):
                flags += ["--runtime", "runc"]
            # --read-only alone still mounts tmpfs on /tmp, /var/tmp and /run in podman.
            flags += ["--read-only-tmpfs=false"]
        return flags

    def build_flags(self) -> list[str]:
        flags: list[str] = []
        if self.is_podman:
            # OCI image format has no HEALTHCHECK; a TLS-intercepting proxy's CA (in the host
            # bundle) must reach pip inside the build.
            flags += ["--format", "docker"]
            if CA_BUNDLE.is_file():
                flags += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
        return flags


def http(
    url: str, *, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback only)
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(what: str, probe: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if probe():
                return
        time.sleep(0.2)
    raise SmokeError(f"timed out after {seconds:.0f} s waiting for {what}")


@contextlib.contextmanager
def sandbox(workdir: Path) -> Iterator[tuple[str, str]]:
    """A sandbox Okta org on host loopback; yields its URL and admin API token."""
    port = free_port()
    token_file = workdir / "api-token"
    out = (workdir / "sandbox.log").open("w")
    argv = [sys.executable, "-m", "forwarder", "sandbox", "--listen", f"127.0.0.1:{port}"]
    argv += ["--api-token-file", str(token_file), "--window-seconds", str(WINDOW_S)]
    proc = subprocess.Popen(  # noqa: S603 (this interpreter, fixed arguments)
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    try:
        wait_for("the sandbox", lambda: "listening on" in (workdir / "sandbox.log").read_text(), 30)
        yield f"http://127.0.0.1:{port}", token_file.read_text().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        out.close()


async def provision(org: str, api_token: str, keys_dir: Path, name: str) -> str:
    """Register a service app + provider as an operator would; returns its client id."""
    import aiohttp  # noqa: PLC0415 (the project's own deps: only needed here)

    from forwarder.okta.admin import AdminClient  # noqa: PLC0415
    from forwarder.okta.keys import generate_signing_key, write_private_key  # noqa: PLC0415

    key = generate_signing_key("ES256")
    write_private_key(keys_dir / f"{name}.jwk.json", key, force=True)
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, org, api_token)
        client_id = str((await admin.create_service_app(name, key.public_jwk()))["client_id"])
        await admin.grant_scope(client_id)
        default = (await admin.list_providers())[0]
        await admin.update_provider(
            default["id"], name=name, client_id=client_id, action="log_only"
        )
    return client_id


def accepted_ips(org: str, api_token: str) -> set[str]:
    status, body = http(f"{org}/_sandbox/accepted", headers={"Authorization": f"SSWS {api_token}"})
    if status != 200:
        raise SmokeError(f"sandbox /_sandbox/accepted answered {status}")
    return {s["ip"] for call in json.loads(body) for e in call["body"] for s in e["subjects"]}


def build(engine: Engine, image: str) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    previous = engine("image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()
    started = time.monotonic()
    result = engine(
        "build",
        *engine.build_flags(),
        "--build-arg",
        f"VERSION={version}",
        "-t",
        image,
        str(REPO),
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise SmokeError(f"build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    size = engine("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()
    if previous and previous not in engine("image", "inspect", "--format", "{{.Id}}", image).stdout:
        engine("rmi", previous, check=False)  # the last smoke build's image, now untagged
    log(f"built {image} in {time.monotonic() - started:.0f} s, {int(size) / 1e6:.0f} MB")


def secrets_dir(workdir: Path) -> tuple[Path, str]:
    """/etc/forwarder/secrets as the deployments lay it out; returns it and the ingest token."""
    root = workdir / "secrets"
    (root / "keys").mkdir(parents=True)
    (root / "ingest").mkdir()
    token = secrets.token_urlsafe(32)
    (root / "ingest" / "tokens").write_text(f"# smoke test\n{token}\n")
    # Throwaway secrets: readable by the container's UID whatever the engine's user mapping.
    for path in (root, root / "keys", root / "ingest"):
        path.chmod(0o755)
    return root, token


def check_running(engine: Engine, name: str, metrics: str) -> None:
    status = engine("exec", name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    if set(uids) != {str(UID)}:
        raise SmokeError(f"the daemon runs as UID {uids}, expected {UID}")
    log(f"daemon (PID 1) runs as UID {UID}")
    status_code, _ = http(f"{metrics}/healthz")
    if status_code != 200:
        raise SmokeError(f"/healthz answered {status_code}")
    if engine.is_podman:
        hc = engine("healthcheck", "run", name, check=False)
    else:  # docker has no `healthcheck run`: run the image's HEALTHCHECK command itself
        test = json.loads(
            engine("inspect", "--format", "{{json .Config.Healthcheck.Test}}", name).stdout
        )
        hc = engine("exec", name, *test[1:], check=False)
    if hc.returncode != 0:
        raise SmokeError(f"HEALTHCHECK failed: {hc.stdout}{hc.stderr}")
    log("/healthz 200 and the image's HEALTHCHECK passes")
    dirs = "/ /tmp /var/tmp /run /etc/forwarder /opt/forwarder"
    probe = f"for d in {dirs}; do touch $d/.probe 2>/dev/null && echo $d; done"
    writable = engine("exec", name, "sh", "-c", probe, check=False).stdout.split()
    if writable:
        raise SmokeError(f"writable outside the volume: {writable}")
    tmp = engine("exec", name, "python", "-c", "import tempfile; print(tempfile.gettempdir())")
    if tmp.stdout.strip() != "/var/lib/forwarder":
        raise SmokeError(f"temp files would go to {tmp.stdout.strip()}")
    log("root filesystem read-only; temp files go to the volume")


def deliver(ingest: str, token: str, org: str, api_token: str) -> None:
    items = [{"ip": f"198.51.100.{i % 250}", "riskLevel": "LOW"} for i in range(50)]
    items += [{"ip": f"203.0.{i // 250}.{i % 250}", "riskLevel": "HIGH"} for i in range(SIGNALS)]
    status, _ = http(f"{ingest}/v1/signals", body=items[:1])
    if status != 401:
        raise SmokeError(f"a request without a token got {status}, expected 401")
    auth = {"Authorization": f"Bearer {token}"}
    status, body = http(f"{ingest}/v1/signals", body=items, headers=auth)
    if status != 202:
        raise SmokeError(f"ingest answered {status}: {body}")
    wanted = {item["ip"] for item in items}
    wait_for("delivery to the sandbox org", lambda: accepted_ips(org, api_token) >= wanted, 60)
    log(f"{len(items)} signals answered 202; all {len(wanted)} IPs delivered to the org")


def stop(engine: Engine, name: str) -> None:
    started = time.monotonic()
    engine("stop", "--time", str(STOP_GRACE_S), name, timeout=STOP_GRACE_S + 30)
    took = time.monotonic() - started
    code = engine("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    logs = engine("logs", name).stdout + engine("logs", name).stderr
    if code != "0":
        raise SmokeError(f"after SIGTERM the container exited {code}:\n{logs[-2000:]}")
    if "forwarder_stopped" not in logs:
        raise SmokeError(f"no forwarder_stopped in the logs:\n{logs[-2000:]}")
    if took > STOP_LIMIT_S:
        raise SmokeError(f"SIGTERM took {took:.1f} s (limit {STOP_LIMIT_S} s)")
    log(f"SIGTERM: drained and exited 0 in {took:.1f} s (stop grace {STOP_GRACE_S} s)")


def smoke(engine: Engine, image: str) -> None:
    suffix = secrets.token_hex(4)
    name, volume = f"forwarder-smoke-{suffix}", f"forwarder-smoke-{suffix}"
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp)) as (org, api_token):
        workdir = Path(tmp)
        secret_root, token = secrets_dir(workdir)
        client_id = asyncio.run(provision(org, api_token, secret_root / "keys", "smoke"))
        for key in (secret_root / "keys").iterdir():
            key.chmod(0o644)
        ingest_port, metrics_port = free_port(), free_port()
        provider = {
            "name": "smoke",
            "org_url": org,
            "client_id": client_id,
            "private_key_file": "/etc/forwarder/secrets/keys/smoke.jwk.json",
            "window_s": WINDOW_S,
        }
        env = {
            # Host network, so bind loopback ports that are free here, not 8080/9464.
            "FORWARDER_INGEST__LISTEN": f"127.0.0.1:{ingest_port}",
            "FORWARDER_METRICS__LISTEN": f"127.0.0.1:{metrics_port}",
            "FORWARDER_PROVIDERS": json.dumps([provider]),
            "FORWARDER_DISPATCH__LINGER_S": "0.5",
        }
        engine("volume", "create", volume)
        try:
            run = ["run", "--detach", "--name", name, "--read-only", "--network", "host"]
            run += [
                "-v",
                f"{volume}:/var/lib/forwarder",
                "-v",
                f"{secret_root}:/etc/forwarder/secrets:ro",
            ]
            run += [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
            engine(*run, *engine.run_flags(), image)
            metrics = f"http://127.0.0.1:{metrics_port}"

            def ready() -> bool:
                state = engine("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
                if state != "true":
                    logs = engine("logs", name)
                    raise SmokeError(f"container exited:\n{logs.stdout}{logs.stderr}")
                return http(f"{metrics}/readyz")[0] == 200

            wait_for("/readyz", ready, 60)
            log("container ready (read-only root, store volume, secrets mounted read-only)")
            check_running(engine, name, metrics)
            deliver(f"http://127.0.0.1:{ingest_port}", token, org, api_token)
            stop(engine, name)
            ls = engine(
                "run",
                "--rm",
                "--read-only",
                "-v",
                f"{volume}:/var/lib/forwarder",
                "--entrypoint",
                "ls",
                *engine.run_flags(),
                image,
                "/var/lib/forwarder",
            )
            if "forwarder.db" not in ls.stdout.split():
                raise SmokeError(f"no store in the volume: {ls.stdout}")
            log("the store (forwarder.db) is in the volume")
        finally:
            engine("rm", "--force", name, check=False)
            engine("volume", "rm", "--force", volume, check=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", help="podman or docker (default: whichever is installed)")
    parser.add_argument("--image", default="localhost/forwarder:smoke", help="image tag")
    parser.add_argument("--no-build", action="store_true", help="use --image as it is")
    args = parser.parse_args(argv)
    path = args.engine or shutil.which("podman") or shutil.which("docker")
    if path is None:
        print("smoke: neither podman nor docker is installed", file=sys.stderr)
        return 2
    engine = Engine(path)
    started = time.monotonic()
    try:
        if not args.no_build:
            build(engine, args.image)
        smoke(engine, args.image)
    except SmokeError as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    log(f"OK in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
