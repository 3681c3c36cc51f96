"""Start / stop a local Argilla server stack (``make argilla-up`` / ``make argilla-down``).

Owns the process life cycle of the local Argilla used for review queues
(ARCHITECTURE §10). Run by ``scripts/argilla.sh`` with the Argilla venv's
Python (stdlib only here, so it runs with any Python 3.11).

The stack, all bound to 127.0.0.1 on free ports:

* Debian ``redis-server``  — the job queue of the Argilla worker;
* ``noida-db`` (Elasticsearch API) — Argilla's search engine;
* ``python -m argilla_server start`` — the API + web UI;
* ``python -m argilla_server worker --num-workers 1`` — background jobs.

``up`` migrates the database, creates the ``owner`` user with an API key (once;
the credentials live in ``<state>/credentials.json`` and are reused on the next
``up``), waits until ``GET /api/v1/me`` answers with that key (``/api/v1/status``
answers 422 on this engine, so it is not used), writes ``url``/``api_key``/
``username``/``password`` into the ``[argilla]`` table of ``<workspace>/config.toml``
(other keys kept intact), records the process ids in ``<state>/state.json`` and
prints the URL and credentials. ``down`` stops exactly the recorded processes
(process group by process group; a pid is only signalled if its command line
still matches what was started). Data (Argilla's SQLite, the noida index)
survives ``down``; ``up --reset`` wipes it. Logs: ``<state>/logs/*.log``.

State folder: ``--state-dir`` > ``$ARGILLA_STATE_DIR`` > ``<repo>/.argilla``.
Workspace: ``--workspace`` > ``$WORKBENCH_HOME`` > ``data/workspace``.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("worker", "server", "noida", "redis")  # stop order


# -- helpers -----------------------------------------------------------------
def free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        st = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
        return st != "Z"
    except (OSError, IndexError):
        return True


def cmdline(pid: int) -> list[str]:
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0") if a]
    except OSError:
        return []


def same_process(pid: int, rec: dict) -> bool:
    """True if ``pid`` still runs the command we started (guards against pid reuse).

    ``rec["match"]`` lists substrings of the command line (redis-server rewrites
    its own title to ``redis-server 127.0.0.1:PORT``, so argv is not compared).
    """
    cl = cmdline(pid)
    if not cl:
        return alive(pid)  # no /proc: trust the pid
    joined = " ".join(cl)
    return all(m in joined for m in rec.get("match") or [Path(rec["argv"][0]).name])


def tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def resolve_workspace(ws: str | None) -> Path:
    p = Path(ws or os.environ.get("WORKBENCH_HOME") or "data/workspace")
    p.mkdir(parents=True, exist_ok=True)
    return p.resolve()


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # JSON string escapes are valid TOML basic-string escapes


def write_argilla_table(config: Path, values: dict) -> None:
    """Replace the ``[argilla]`` table of ``config`` (created if missing); other content kept verbatim."""
    text = config.read_text(encoding="utf-8") if config.exists() else ""
    if text:
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SystemExit(f"error: {config}: invalid TOML, not touching it: {e}")
    out, skipping = [], False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("["):
            name = s.strip("[] \t").split("#")[0].strip()
            skipping = name == "argilla" or name.startswith("argilla.")
        if not skipping:
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    block = ["[argilla]", "# written by `make argilla-up` (scripts/argilla_local.py); local development server"]
    block += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    new = ("\n".join(out) + "\n\n" if out else "") + "\n".join(block) + "\n"
    parsed = tomllib.loads(new)  # must round-trip
    assert parsed["argilla"]["url"] == values["url"]
    config.write_text(new, encoding="utf-8")


# -- state -------------------------------------------------------------------
def state_dir(arg: str | None) -> Path:
    d = Path(arg or os.environ.get("ARGILLA_STATE_DIR") or ROOT / ".argilla").resolve()
    d.mkdir(parents=True, exist_ok=True)
    (d / "logs").mkdir(exist_ok=True)
    return d


def load_json(p: Path) -> dict:
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


def save_json(p: Path, obj: dict) -> None:
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(p)


def stop_all(sd: Path, quiet: bool = False) -> int:
    st = load_json(sd / "state.json")
    procs = st.get("processes", {})
    stopped = 0
    for name in SERVICES:
        p = procs.get(name)
        if not p:
            continue
        pid = int(p["pid"])
        if not alive(pid):
            continue
        if not same_process(pid, p):
            print(f"warning: pid {pid} ({name}) now runs something else ({' '.join(cmdline(pid))[:80]}); not touching it")
            continue
        try:
            os.killpg(pid, signal.SIGTERM)  # each service runs in its own session: pgid == pid
        except ProcessLookupError:
            continue
        except PermissionError:
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.1)
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stopped += 1
        if not quiet:
            print(f"stopped {name} (pid {pid})")
    if (sd / "state.json").exists():
        st["processes"] = {}
        st["stopped_at"] = time.time()
        save_json(sd / "state.json", st)
    return stopped


def start(name: str, argv: list[str], env: dict, sd: Path, procs: dict, match: list[str]) -> subprocess.Popen:
    log = open(sd / "logs" / f"{name}.log", "ab")
    log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
    log.flush()
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                         cwd=sd, start_new_session=True)
    procs[name] = {"pid": p.pid, "argv": argv, "match": match, "log": str(sd / "logs" / f"{name}.log")}
    return p


def wait_for(what: str, check, procs_running: dict[str, subprocess.Popen], sd: Path, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if check():
            return
        for name, p in procs_running.items():
            if p.poll() is not None:
                raise SystemExit(f"error: {name} exited with code {p.returncode} while waiting for {what}; "
                                 f"last lines of {sd / 'logs' / (name + '.log')}:\n{tail(sd / 'logs' / (name + '.log'))}")
        time.sleep(0.5)
    raise SystemExit(f"error: {what} not ready after {timeout:.0f}s; logs in {sd / 'logs'}")


def noida_binary(py: str) -> str:
    """The noida-db executable itself (its console script is a Python wrapper that would hide the pid)."""
    out = subprocess.run([py, "-c", "from importlib.resources import files;print(files('noida_db').joinpath('noida-db'))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    os.chmod(out, 0o755)
    return out


# -- commands ----------------------------------------------------------------
def cmd_up(a: argparse.Namespace) -> int:
    sd = state_dir(a.state_dir)
    ws = resolve_workspace(a.workspace)
    py = a.python or sys.executable
    st = load_json(sd / "state.json")
    creds = load_json(sd / "credentials.json")

    # already running? then only refresh the workspace config
    if st.get("processes") and creds:
        url = st["url"]
        code, _ = http_get(f"{url}/api/v1/me", {"X-Argilla-Api-Key": creds["api_key"]})
        if code == 200 and all(alive(int(p["pid"])) for p in st["processes"].values()):
            write_config(ws, url, creds)
            report(url, creds, sd, ws, already=True)
            return 0
        print("a previous stack is (partly) down; restarting it")
        stop_all(sd, quiet=True)

    if a.reset:
        for sub in ("home", "noida", "redis"):
            shutil.rmtree(sd / sub, ignore_errors=True)
        (sd / "credentials.json").unlink(missing_ok=True)
        creds = {}
    for sub in ("home", "noida", "redis"):
        (sd / sub).mkdir(exist_ok=True)
    redis_bin = shutil.which("redis-server")
    if not redis_bin:
        raise SystemExit("error: redis-server not found; install it with `make system-deps` (Debian package redis-server)")

    if not creds:
        creds = {"username": "owner", "password": secrets.token_urlsafe(12),
                 "api_key": "wb.owner." + secrets.token_urlsafe(24), "secret_key": secrets.token_hex(32)}
    ports = {"redis": free_port(), "elasticsearch": free_port()}
    ports["server"] = free_port(a.port)
    url = f"http://127.0.0.1:{ports['server']}"
    env = dict(os.environ)
    env.update({
        "ARGILLA_HOME_PATH": str(sd / "home"),
        "ARGILLA_ELASTICSEARCH": f"http://127.0.0.1:{ports['elasticsearch']}",
        "ARGILLA_SEARCH_ENGINE": "elasticsearch",
        "ARGILLA_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "ARGILLA_AUTH_SECRET_KEY": creds["secret_key"],
        "ARGILLA_ENABLE_TELEMETRY": "0",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    })
    procs: dict = {}
    running: dict[str, subprocess.Popen] = {}
    st = {"url": url, "ports": ports, "workspace_config": str(ws / "config.toml"), "processes": procs,
          "started_at": time.time(), "python": py}

    def checkpoint() -> None:
        save_json(sd / "state.json", st)

    try:
        running["redis"] = start("redis", [redis_bin, "--port", str(ports["redis"]), "--bind", "127.0.0.1",
                                           "--save", "", "--appendonly", "no", "--dir", str(sd / "redis")], env, sd, procs,
                                  ["redis-server", f":{ports['redis']}"])
        checkpoint()
        running["noida"] = start("noida", [noida_binary(py), "start", "--data-dir", str(sd / "noida"), "--only", "elasticsearch",
                                           "--elasticsearch-port", str(ports["elasticsearch"])], env, sd, procs,
                                  ["noida-db", str(sd / "noida")])
        checkpoint()
        wait_for("noida-db (elasticsearch API)",
                 lambda: http_get(f"http://127.0.0.1:{ports['elasticsearch']}/")[0] == 200, running, sd, 60)
        print("redis + noida-db up; migrating the Argilla database …", flush=True)
        run = lambda *args: subprocess.run([py, "-m", "argilla_server", *args], env=env, capture_output=True, text=True, cwd=sd)
        r = run("database", "migrate")
        if r.returncode:
            raise SystemExit(f"error: `argilla_server database migrate` failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        if not creds.get("created"):
            r = run("database", "users", "create", "--first-name", "Owner", "--username", creds["username"],
                    "--password", creds["password"], "--role", "owner", "--api-key", creds["api_key"])
            if r.returncode:
                raise SystemExit(f"error: creating the owner user failed (an old database without {sd}/credentials.json? "
                                 f"rerun with --reset):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
            creds["created"] = time.time()
            save_json(sd / "credentials.json", creds)
        running["server"] = start("server", [py, "-m", "argilla_server", "start", "--host", "127.0.0.1",
                                             "--port", str(ports["server"]), "--no-access-log"], env, sd, procs,
                                   ["argilla_server", "start", str(ports["server"])])
        checkpoint()
        running["worker"] = start("worker", [py, "-m", "argilla_server", "worker", "--num-workers", "1"], env, sd, procs,
                                   ["argilla_server", "worker"])
        checkpoint()
        print(f"waiting for the Argilla server at {url} …", flush=True)
        wait_for(f"Argilla server at {url}",
                 lambda: http_get(f"{url}/api/v1/me", {"X-Argilla-Api-Key": creds["api_key"]})[0] == 200,
                 running, sd, a.timeout)
    except BaseException:
        checkpoint()
        stop_all(sd, quiet=True)
        raise
    checkpoint()
    write_config(ws, url, creds)
    report(url, creds, sd, ws, already=False)
    return 0


def write_config(ws: Path, url: str, creds: dict) -> None:
    write_argilla_table(ws / "config.toml", {"url": url, "api_key": creds["api_key"], "username": creds["username"],
                                             "password": creds["password"]})


def report(url: str, creds: dict, sd: Path, ws: Path, already: bool) -> None:
    print(("Argilla is already running" if already else "Argilla is up") + f"\n"
          f"  URL:       {url}\n"
          f"  username:  {creds['username']}\n"
          f"  password:  {creds['password']}\n"
          f"  API key:   {creds['api_key']}\n"
          f"  written to {ws / 'config.toml'} [argilla]\n"
          f"  state:     {sd / 'state.json'}   logs: {sd / 'logs'}\n"
          f"  stop with: make argilla-down   (or: bash scripts/argilla.sh down)")


def cmd_down(a: argparse.Namespace) -> int:
    sd = state_dir(a.state_dir)
    if not (sd / "state.json").exists():
        print(f"nothing to stop (no {sd / 'state.json'})")
        return 0
    n = stop_all(sd)
    print(f"Argilla stack stopped ({n} process(es)); data kept in {sd}")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    sd = state_dir(a.state_dir)
    st = load_json(sd / "state.json")
    if not st.get("processes"):
        print("not running")
        return 1
    for name, p in st["processes"].items():
        print(f"{name:7s} pid {p['pid']:>7}  {'alive' if alive(int(p['pid'])) else 'DEAD'}")
    creds = load_json(sd / "credentials.json")
    code, _ = http_get(f"{st['url']}/api/v1/me", {"X-Argilla-Api-Key": creds.get("api_key", "")})
    print(f"{st['url']}/api/v1/me -> {code or 'unreachable'}")
    return 0 if code == 200 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/argilla.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for n, h in (("up", "start the stack (idempotent)"), ("down", "stop the recorded processes"), ("status", "show pids and health")):
        x = sub.add_parser(n, help=h)
        x.add_argument("--state-dir", help="pids, logs, data (default: $ARGILLA_STATE_DIR or <repo>/.argilla)")
        if n == "up":
            x.add_argument("--workspace", help="workbench workspace whose config.toml gets [argilla] (default: $WORKBENCH_HOME or data/workspace)")
            x.add_argument("--port", type=int, default=int(os.environ.get("ARGILLA_PORT", "6900")),
                           help="server port if free, else a free one (default 6900 or $ARGILLA_PORT)")
            x.add_argument("--timeout", type=float, default=300, help="seconds to wait for the server (default 300)")
            x.add_argument("--reset", action="store_true", help="wipe the stored Argilla data and credentials first")
            x.add_argument("--python", help="Python of the Argilla venv (default: the one running this script)")
    a = p.parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
