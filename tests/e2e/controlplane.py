"""A real Kubernetes control plane for the end-to-end tests.

kine (SQLite) -> kube-apiserver -> [kube-controller-manager] -> [kwok (fake kubelets)] ->
[extender] -> kube-scheduler, each a child process in its own process group, all listening
on 127.0.0.1 only, with every component's output kept in a log file under the plane's work dir.
No mocks: these are the upstream binaries built by tools/controlplane/build.sh.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

REPO_ROOT = Path(__file__).resolve().parents[2]
# The ONE source of the extender settings, shared with the helm chart.
EXTENDER_CONFIG = REPO_ROOT / "deploy" / "helm" / "flexai" / "files" / "extender.yaml"
LOOPBACK = "127.0.0.1"

# The live planes, so the pytest hook can attach their logs to any failed test.
_LIVE: list[ControlPlane] = []


class ControlPlaneError(RuntimeError):
    """A component failed to start or to become ready (message carries the log tails)."""


def live_planes() -> list[ControlPlane]:
    return list(_LIVE)


def free_port() -> int:
    """A port that was free on loopback a moment ago (bind to :0, let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll pred until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    """True when GET url answers 200."""
    # No proxies: even with HTTP(S)_PROXY set, loopback traffic must stay on loopback.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as e:
        e.close()  # an unclosed error body is a ResourceWarning, and warnings are errors here
        return False
    except (OSError, ValueError):
        return False


def _child_env(extra: Mapping[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    if home is not None:
        env["HOME"] = str(home)  # kwok reads ~/.kwok/kwok.yaml: keep the developer's config out
    env.update(extra or {})
    return env


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Process:
    """One component: a child in its own process group, output appended to a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, cwd: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        assert self.popen is None, f"{self.name} already started"
        self._log = open(self.log_path, "ab")
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        self._log.write(f"=== {stamp} start: {shlex.join(self.argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        # WNOWAIT: look without reaping, so the pid (and its process group id) stays ours
        # until stop() has signalled the whole group.
        if self.popen is None or self.popen.returncode is not None:
            return False
        return os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """Signal the group, SIGKILL what is left after `grace`, reap. Idempotent."""
        p = self.popen
        if p is None:
            return
        if p.returncode is None:
            # The leader is not reaped yet, so its pgid cannot have been reused by anyone else.
            self._killpg(p.pid, sig)
            deadline = time.monotonic() + grace
            while self.alive and time.monotonic() < deadline:
                time.sleep(0.05)
            self._killpg(p.pid, signal.SIGKILL)  # the leader or any straggling child
            p.wait()
        self.popen = None
        if self._log is not None:
            self._log.write(f"=== exit status {p.returncode}\n".encode())
            self._log.close()
            self._log = None

    @staticmethod
    def _killpg(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 60, max_bytes: int = 64 * 1024) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                data = f.read()
        except FileNotFoundError:
            return "(no log)"
        text = _ANSI.sub("", data.decode(errors="replace"))  # kine colours its log even in a file
        return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------- certificates


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server_sans: Sequence[str] = (),
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_sans else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_sans:
        sans: list[x509.GeneralName] = []
        for s in server_sans:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                sans.append(x509.DNSName(s))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Pki:
    ca_crt: Path
    server_crt: Path
    server_key: Path
    admin_crt: Path
    admin_key: Path
    sa_pub: Path
    sa_key: Path
    ca_key: Path  # kept so a real node (tests/realnode) can be given its own identity


def generate_pki(d: Path) -> Pki:
    """CA, apiserver serving cert, system:masters admin client cert, service-account RSA pair."""
    d.mkdir(parents=True, exist_ok=True)
    # EC P-256 for TLS: generated in microseconds, where RSA would cost startup time.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("flexai-e2e-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert(_name("kube-apiserver"), srv_key, ca_name, ca_key, server_sans=(LOOPBACK, "localhost"))
    adm_key = ec.generate_private_key(ec.SECP256R1())
    adm = _cert(_name("flexai-e2e-admin", "system:masters"), adm_key, ca_name, ca_key, client=True)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki = Pki(
        d / "ca.crt",
        d / "apiserver.crt",
        d / "apiserver.key",
        d / "admin.crt",
        d / "admin.key",
        d / "sa.pub",
        d / "sa.key",
        d / "ca.key",
    )
    _write_cert(pki.ca_crt, ca)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.server_crt, srv)
    _write_key(pki.server_key, srv_key)
    _write_cert(pki.admin_crt, adm)
    _write_key(pki.admin_key, adm_key)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki


def issue_certificate(
    pki: Pki,
    crt: Path,
    key: Path,
    cn: str,
    org: str | None = None,
    server_sans: Sequence[str] = (),
    client: bool = False,
) -> None:
    """A certificate signed by the plane's CA (e.g. a kubelet's client and serving pair)."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(pki.ca_crt.read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    k = ec.generate_private_key(ec.SECP256R1())
    _write_cert(crt, _cert(_name(cn, org), k, ca.subject, ca_key, server_sans=server_sans, client=client))
    _write_key(key, k)


# ---------------------------------------------------------------------------- extender

# argv, or a callable building it from (kubeconfig, host, port). Strings in a plain argv may
# carry the placeholders {kubeconfig}, {host} and {port}.
ExtenderArgv = Sequence[str] | Callable[[Path, str, int], Sequence[str]]


@dataclass(frozen=True)
class ExtenderSpec:
    argv: ExtenderArgv
    env: Mapping[str, str] = field(default_factory=dict)
    health_path: str = "/healthz"
    startup_timeout: float = 30.0

    def command(self, kubeconfig: Path, host: str, port: int) -> list[str]:
        if callable(self.argv):
            return list(self.argv(kubeconfig, host, port))
        return [a.format(kubeconfig=kubeconfig, host=host, port=port) for a in self.argv]


def flexai_sched_extender(*extra_args: str, env: Mapping[str, str] | None = None) -> ExtenderSpec:
    """Our extender on the Kubernetes backend: `flexai-sched serve`, from this venv."""
    exe = Path(sys.executable).with_name("flexai-sched")
    return ExtenderSpec(
        [str(exe), "serve", "--kubeconfig", "{kubeconfig}", "--host", "{host}", "--port", "{port}", *extra_args],
        env=dict(env or {}),
    )


def extender_block(
    url_prefix: str, node_cache_capable: bool | None = None, source: Path = EXTENDER_CONFIG
) -> dict[str, Any]:
    """The scheduler's `extenders:` entry, from the file the helm chart embeds."""
    block: dict[str, Any] = yaml.safe_load(source.read_text())
    if block.get("urlPrefix") != "URL_PREFIX":
        raise ControlPlaneError(f"{source}: urlPrefix is not the URL_PREFIX placeholder")
    block["urlPrefix"] = url_prefix
    if node_cache_capable is not None:
        block["nodeCacheCapable"] = node_cache_capable
    return block


# ---------------------------------------------------------------------------- the plane

# What a chart needs of kube-controller-manager on a real node: its workloads, service
# accounts and their CA, garbage collection (an uninstall's ReplicaSets and pods), namespace
# deletion, and Endpoints (the apiserver's service proxy reads them). Node lifecycle stays
# off: a node without a CNI is never Ready, and it would taint it.
CONTROLLERS = (
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "endpoints-controller",
)


class ControlPlane:
    """kine + kube-apiserver + [kube-controller-manager] + [kwok] + [extender] + kube-scheduler
    on loopback.

    plane = ControlPlane(bin_dir).start()          # kube-scheduler without extender, or
    plane = ControlPlane(bin_dir).start(extender=ExtenderSpec([...]))
    plane.start_extender(spec); plane.restart_scheduler(with_extender=True)  # add one later
    ...
    plane.stop()                                   # idempotent; also runs at exit
    """

    def __init__(
        self,
        bin_dir: Path,
        workdir: Path | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
        startup_timeout: float = 60.0,
        kwok_all_nodes: bool = True,
        controller_manager: bool = False,
        kwok: bool = True,
        profiling: bool = False,
    ) -> None:
        self.bin_dir = Path(bin_dir)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="flexai-cp-"))
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Extra KubeSchedulerConfiguration fields, e.g. {"clientConnection": {"qps": 500,
        # "burst": 1000}} for benchmarks (the v1 default of 50 qps caps binding throughput).
        self.scheduler_config_extra = dict(scheduler_config or {})
        self.startup_timeout = startup_timeout
        # False: kwok manages only nodes annotated as fake (make_fake_node does), leaving a
        # real kubelet's node and pods to that kubelet.
        self.kwok_all_nodes = kwok_all_nodes
        # kube-controller-manager (CONTROLLERS only) and the ServiceAccount admission plugin:
        # Deployments, DaemonSets and service-account tokens, for a chart installed on a real
        # node (tests/realnode/test_helm_install.py). kwok=False: no fake kubelets at all.
        self.controller_manager = controller_manager
        self.kwok = kwok
        # True: kube-apiserver and kube-scheduler serve /debug/pprof (benchmarks' CPU profiles).
        self.profiling = profiling
        self.procs: dict[str, Process] = {}
        self.timings: dict[str, float] = {}
        self.pki: Pki | None = None
        self.etcd_url = ""
        self.api_port = 0
        self.scheduler_port = 0
        self.extender_port = 0
        self.extender_spec: ExtenderSpec | None = None
        self.node_cache_capable: bool | None = None
        self.scheduler_uses_extender = False
        self._started = False

    # -- public properties

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def api_url(self) -> str:
        return f"https://{LOOPBACK}:{self.api_port}"

    @property
    def extender_url(self) -> str:
        return f"http://{LOOPBACK}:{self.extender_port}"

    def api_client(self) -> k8s.ApiClient:
        """A new official-client ApiClient with the admin kubeconfig's credentials; the caller
        closes it. Built from the same files as the kubeconfig, not by parsing it, because
        the client's kubeconfig loader is untyped."""
        pki = self.pki
        assert pki is not None, "plane not started"
        cfg = k8s.Configuration(host=self.api_url)
        cfg.ssl_ca_cert = str(pki.ca_crt)
        cfg.cert_file = str(pki.admin_crt)
        cfg.key_file = str(pki.admin_key)
        return k8s.ApiClient(cfg)

    def core_api(self) -> k8s.CoreV1Api:
        """CoreV1Api on a new ApiClient; close with `api.api_client.close()`."""
        return k8s.CoreV1Api(self.api_client())

    # -- lifecycle

    def start(self, extender: ExtenderSpec | None = None, node_cache_capable: bool | None = None) -> ControlPlane:
        assert not self._started, "start() once; use restart_scheduler()/start_extender() after"
        self._started = True
        _LIVE.append(self)
        atexit.register(self.stop)  # a crashed test run must not leave apiservers behind
        t0 = time.monotonic()
        try:
            self._step("pki", lambda: self._set_pki(generate_pki(self.workdir / "pki")))
            self._step("kine", self._start_kine)
            self._step("kube-apiserver", self._start_apiserver)
            if self.controller_manager:
                self._step("kube-controller-manager", self._start_controller_manager)
            if self.kwok:
                self._step("kwok", self._start_kwok)
            if extender is not None:
                self._step("extender", lambda: self.start_extender(extender))
            self.node_cache_capable = node_cache_capable
            self._step("kube-scheduler", lambda: self._start_scheduler(extender is not None))
        except BaseException as e:
            msg = f"control plane failed to start: {e}\n{self.log_tails()}"
            self.stop()
            if isinstance(e, Exception):
                raise ControlPlaneError(msg) from e
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Tear everything down in reverse start order (SIGTERM, then SIGKILL). Idempotent."""
        for name in reversed(list(self.procs)):
            self.procs[name].stop()
        if self in _LIVE:
            _LIVE.remove(self)
        atexit.unregister(self.stop)
        if self._own_workdir and not os.environ.get("FLEXAI_E2E_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- extender (crash tests)

    def start_extender(self, spec: ExtenderSpec | None = None) -> None:
        """Start (or start again) the extender on its fixed port and wait for its health check.

        The port is chosen once: the scheduler's config points at it, so a restarted
        extender must come back on the same address.
        """
        spec = spec or self.extender_spec
        assert spec is not None, "no extender spec given"
        old = self.procs.get("extender")
        if old is not None and old.alive:
            raise ControlPlaneError("extender already running")
        self.extender_spec = spec
        if not self.extender_port:
            self.extender_port = free_port()
        argv = spec.command(self.kubeconfig, LOOPBACK, self.extender_port)
        p = self._spawn("extender", argv, _child_env(spec.env))
        health = self.extender_url + spec.health_path
        self._wait_ready(p, lambda: http_ok(health), spec.startup_timeout, f"extender {health}")

    def kill_extender(self, sig: int = signal.SIGKILL) -> None:
        """Kill the extender's whole process group (SIGKILL by default: a crash, no cleanup)."""
        p = self.procs.get("extender")
        if p is not None:
            p.stop(sig=sig, grace=5.0)

    def restart_extender(self, sig: int = signal.SIGKILL) -> None:
        self.kill_extender(sig)
        self.start_extender()

    # -- scheduler

    def restart_scheduler(self, with_extender: bool | None = None, node_cache_capable: bool | None = None) -> None:
        """Restart kube-scheduler, e.g. to switch nodeCacheCapable mode or add/remove the
        extender. with_extender=None keeps the current choice; node_cache_capable=None keeps
        what extender.yaml says."""
        if with_extender is None:
            with_extender = self.scheduler_uses_extender
        p = self.procs.get("kube-scheduler")
        if p is not None:
            p.stop()
        self.node_cache_capable = node_cache_capable
        self._start_scheduler(with_extender)

    def listeners(self) -> dict[str, list[str]]:
        """TCP sockets in LISTEN state held by each running component's process group,
        as "ip:port" (read from /proc), to prove everything is on loopback."""
        inodes: dict[str, str] = {}  # socket inode -> component
        for name, p in self.procs.items():
            if p.alive and p.popen is not None:
                for pid in _group_pids(p.popen.pid):
                    for inode in _socket_inodes(pid):
                        inodes[inode] = name
        out: dict[str, list[str]] = {name: [] for name in self.procs}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                        out[inodes[inode]].append(_proc_addr(local))
        return out

    # -- logs

    def log_tails(self, lines: int = 60) -> str:
        parts = []
        for name, p in self.procs.items():
            state = "running" if p.alive else "stopped"
            parts.append(f"----- {name} ({state}) {p.log_path} (last {lines} lines) -----\n{p.tail(lines)}")
        return "\n".join(parts) if parts else "(no components started)"

    # -- internals

    def _step(self, name: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        fn()
        self.timings[name] = time.monotonic() - t

    def _set_pki(self, pki: Pki) -> None:
        self.pki = pki

    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise ControlPlaneError(f"missing binary {path}: run tools/controlplane/build.sh")
        return str(path)

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Process:
        old = self.procs.get(name)
        if old is not None:
            old.stop()  # reap a predecessor that died on its own, and close its log
        p = Process(name, argv, self.log_dir / f"{name}.log", self.workdir, env)
        self.procs[name] = p  # registered before start so stop() and log_tails() see it
        p.start()
        return p

    def _wait_ready(self, p: Process, check: Callable[[], bool], timeout: float, what: str) -> None:
        def ready() -> bool:
            if not p.alive:
                raise ControlPlaneError(f"{p.name} exited while waiting for {what}")
            return check()

        wait_until(ready, timeout, what, interval=0.1)

    def _start_kine(self) -> None:
        port = free_port()
        db = self.workdir / "kine" / "state.db"
        db.parent.mkdir(exist_ok=True)
        # kine's own default SQLite parameters (WAL, busy timeout): an endpoint with a query
        # string replaces them, so pass them along with our path.
        params = (
            "_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL&_txlock=immediate"
            "&_stmt_cache_size=20&cache=shared"
        )
        argv = [
            self._bin("kine"),
            "--listen-address",
            f"{LOOPBACK}:{port}",
            "--endpoint",
            f"sqlite://{db}?{params}",
            "--metrics-bind-address",
            "0",
        ]  # default :8080 would listen on all interfaces
        p = self._spawn("kine", argv, _child_env())
        self.etcd_url = f"http://{LOOPBACK}:{port}"
        self._wait_ready(p, lambda: _tcp_open(port), self.startup_timeout, f"kine on {port}")

    def _start_apiserver(self) -> None:
        pki = self.pki
        assert pki is not None
        self.api_port = free_port()
        argv = [
            self._bin("kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.server_crt}",
            f"--tls-private-key-file={pki.server_key}",
            f"--client-ca-file={pki.ca_crt}",
            f"--secure-port={self.api_port}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # Node: a real kubelet (tests/realnode) may touch only its own Node and pods.
            "--authorization-mode=Node,RBAC",
            # logs and exec reach a real kubelet as the admin (kwok nodes serve none)
            f"--kubelet-client-certificate={pki.admin_crt}",
            f"--kubelet-client-key={pki.admin_key}",
            "--kubelet-preferred-address-types=InternalIP",  # node names do not resolve here
            "--allow-privileged=true",
            # Without a controller-manager nothing would create default service accounts;
            # and none here lifts the not-ready taint that TaintNodesByCondition puts on
            # every new node (so no pod would ever schedule).
            "--disable-admission-plugins="
            + ("TaintNodesByCondition" if self.controller_manager else "ServiceAccount,TaintNodesByCondition"),
            # no "kubernetes" service endpoints pointing at this host
            "--endpoint-reconciler-type=none",
            f"--service-account-issuer=https://{LOOPBACK}:{self.api_port}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--profiling={str(self.profiling).lower()}",
        ]
        p = self._spawn("kube-apiserver", argv, _child_env())
        self._write_kubeconfig()
        ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
        ctx.load_cert_chain(str(pki.admin_crt), str(pki.admin_key))
        self._wait_ready(
            p, lambda: http_ok(self.api_url + "/readyz", ctx), self.startup_timeout, "kube-apiserver /readyz"
        )

    def _write_kubeconfig(self) -> None:
        pki = self.pki
        assert pki is not None
        # Certificate paths rather than inline data: the python client would copy inline
        # data into temp files it never removes.
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "e2e",
            "clusters": [
                {"name": "e2e", "cluster": {"server": self.api_url, "certificate-authority": str(pki.ca_crt)}}
            ],
            "users": [
                {"name": "admin", "user": {"client-certificate": str(pki.admin_crt), "client-key": str(pki.admin_key)}}
            ],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg))

    def _start_controller_manager(self) -> None:
        pki = self.pki
        assert pki is not None
        port = free_port()
        argv = [
            self._bin("kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            f"--controllers={','.join(CONTROLLERS)}",
            "--leader-elect=false",
            # the CA that pods' service-account volumes carry (ConfigMap kube-root-ca.crt)
            f"--root-ca-file={pki.ca_crt}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            "--v=2",
        ]
        p = self._spawn("kube-controller-manager", argv, _child_env())
        url = f"https://{LOOPBACK}:{port}/healthz"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self._wait_ready(
            p,
            lambda: http_ok(url, ctx) and self._default_service_account(),
            self.startup_timeout,
            "kube-controller-manager /healthz and the default service account",
        )

    def _default_service_account(self) -> bool:
        api = self.core_api()
        try:
            api.read_namespaced_service_account("default", "default")
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        finally:
            api.api_client.close()

    def _start_kwok(self) -> None:
        port = free_port()
        home = self.workdir / "kwok-home"
        home.mkdir(exist_ok=True)
        argv = [
            self._bin("kwok"),
            f"--kubeconfig={self.kubeconfig}",
            *(
                ["--manage-all-nodes=true"]
                if self.kwok_all_nodes
                else ["--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake"]
            ),
            # its health server only, on loopback; no --node-port, so no kubelet endpoints
            f"--server-address={LOOPBACK}:{port}",
            f"--node-ip={LOOPBACK}",
            "--cidr=10.244.0.1/16",
        ]  # fake pod IPs, apart from the service range
        p = self._spawn("kwok", argv, _child_env(home=home))
        # kwok starts serving only after its controllers started, so healthz means "managing".
        self._wait_ready(p, lambda: http_ok(f"http://{LOOPBACK}:{port}/healthz"), self.startup_timeout, "kwok /healthz")

    def _scheduler_config(self, with_extender: bool) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "leaderElection": {"leaderElect": False},
        }
        for key, value in self.scheduler_config_extra.items():
            # merge one level deep, so e.g. {"clientConnection": {"qps": 500}} keeps kubeconfig
            if isinstance(value, Mapping) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        if with_extender:
            if not self.extender_port:
                raise ControlPlaneError("scheduler with extender asked, but no extender started")
            cfg["extenders"] = [extender_block(self.extender_url, self.node_cache_capable)]
        return cfg

    def _start_scheduler(self, with_extender: bool) -> None:
        cfg_path = self.workdir / "kube-scheduler.yaml"
        cfg_path.write_text(yaml.safe_dump(self._scheduler_config(with_extender), sort_keys=False))
        self.scheduler_uses_extender = with_extender
        self.scheduler_port = free_port()
        argv = [
            self._bin("kube-scheduler"),
            f"--config={cfg_path}",
            f"--secure-port={self.scheduler_port}",
            f"--bind-address={LOOPBACK}",
            # No delegated authn/authz (the apiserver has no request-header CA for it):
            # anonymous may read health and metrics, on loopback only.
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"
            + (",/debug/pprof/*" if self.profiling else ""),
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
            "--v=2",
        ]  # v2 logs each binding decision, which is what a failed test needs
        p = self._spawn("kube-scheduler", argv, _child_env())
        # Self-signed serving cert on loopback: nothing to verify it against.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        url = f"https://{LOOPBACK}:{self.scheduler_port}/readyz"
        self._wait_ready(p, lambda: http_ok(url, ctx), self.startup_timeout, "kube-scheduler /readyz")


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            # fields after the ")" that ends the command name: state ppid pgrp ...
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(d))
    return pids


def _socket_inodes(pid: int) -> list[str]:
    inodes = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.append(target[8:-1])
    except OSError:
        pass
    return inodes


def _proc_addr(hex_addr: str) -> str:
    """ "0100007F:1F90" (/proc/net/tcp, little-endian words) -> "127.0.0.1:8080"."""
    ip_hex, port_hex = hex_addr.split(":")
    raw = bytes.fromhex(ip_hex)
    # each 32-bit word is in host (little-endian) order
    ip = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return f"{ipaddress.ip_address(ip)}:{int(port_hex, 16)}"


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- cluster helpers

KWOK_ANNOTATION = "kwok.x-k8s.io/node"


def node_ready(core: k8s.CoreV1Api, name: str) -> bool:
    try:
        node = core.read_node_status(name)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def make_fake_node(
    core: k8s.CoreV1Api,
    name: str,
    annotations: Mapping[str, str] | None = None,
    capacity: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    wait_ready: float = 30.0,
) -> k8s.V1Node:
    """Create a kwok-managed Node and wait until kwok has made it Ready.

    capacity: extra or overriding status.capacity entries (e.g. extended resources); the
    same values are used for allocatable. kwok keeps the status it finds and only adds
    conditions, nodeInfo and addresses.
    """
    res = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    res.update(capacity or {})
    body = k8s.V1Node(
        metadata=k8s.V1ObjectMeta(
            name=name,
            annotations={KWOK_ANNOTATION: "fake", **(annotations or {})},
            labels={
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                **(labels or {}),
            },
        ),
        # The apiserver keeps a Node's status on create (a kubelet registers that way).
        status=k8s.V1NodeStatus(capacity=dict(res), allocatable=dict(res)),
    )
    core.create_node(body)
    if wait_ready:
        wait_until(lambda: node_ready(core, name), wait_ready, f"node {name} Ready")
    node: k8s.V1Node = core.read_node(name)
    return node


def make_pod(
    core: k8s.CoreV1Api,
    name: str,
    namespace: str = "default",
    requests: Mapping[str, str] | None = None,
    limits: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> k8s.V1Pod:
    """A one-container pod left for the scheduler (no nodeName)."""
    body = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, annotations=dict(annotations or {})),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="main",
                    image="registry.invalid/fake:1",  # kwok never pulls it
                    resources=k8s.V1ResourceRequirements(
                        requests=dict(requests) if requests else None, limits=dict(limits) if limits else None
                    ),
                )
            ],
            termination_grace_period_seconds=30,
        ),
    )
    pod: k8s.V1Pod = core.create_namespaced_pod(namespace, body)
    return pod


def _name_of(obj: k8s.V1Pod | k8s.V1Node) -> str:
    assert obj.metadata is not None and obj.metadata.name is not None
    return obj.metadata.name


def wipe(core: k8s.CoreV1Api, namespace: str = "default", timeout: float = 60.0) -> None:
    """Force-delete every pod in `namespace` and every node: a clean cluster for the next test."""
    for name in [_name_of(p) for p in core.list_namespaced_pod(namespace).items]:
        try:
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise
    wait_until(lambda: not core.list_namespaced_pod(namespace).items, timeout, "pods deleted")
    for name in [_name_of(n) for n in core.list_node().items]:
        try:
            core.delete_node(name)
        except ApiException as e:
            if e.status != 404:
                raise
    wait_until(lambda: not core.list_node().items, timeout, "nodes deleted")
