"""A real Kubernetes node for the tests: containerd + runc + kubelet, joined to a tests/e2e
ControlPlane, and flexai-node as its device plugin and inventory reporter.

    node = RealNode(plane, kubelet_bin, workdir)
    node.start(images)                       # containerd, the images imported, the kubelet
    node.start_agent(inventory_file, hook)   # flexai-node in its own PID and mount namespaces
    node.import_image(archive)               # any OCI/docker archive, e.g. one buildah wrote
    node.exec(pod, container, argv)          # a process in that container (env, namespaces)
    node.restart_kubelet() / restart_containerd() / kill_agent()
    node.stop()                              # containers, processes, mounts, cgroups; idempotent

The node has its own mount namespace, as a machine would: containerd, the kubelet and the
agent run in it (the agent in a further PID and mount namespace of its own), and in it the
paths the kubelet and containerd fix whatever their flags say are bound to the work dir:
/var/lib/kubelet/device-plugins (the kubelet's Registration socket), /var/log/containers and
/run/containerd (the shims' sockets). So everything the node keeps is under its work dir, and
its mounts (container root filesystems, the bound paths) go when its processes do. On the host
those three paths exist as empty mount points. The node's cgroups live under a cgroup root of
its own, removed at stop. Pods run with hostNetwork: no CNI is installed, so the node reports
its network not ready and the kubelet starts hostNetwork pods only.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from flexai_core import resources as res
from tests.e2e.controlplane import (
    LOOPBACK,
    ControlPlane,
    ControlPlaneError,
    Process,
    free_port,
    http_ok,
    issue_certificate,
    wait_until,
)

K8S_NS = "k8s.io"  # containerd's namespace for the CRI's containers and images
PAUSE_IMAGE = "flexai.local/pause:1"
BASE_IMAGE = "flexai.local/base:bookworm"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Paths the kubelet and containerd use whatever their flags say; bound to the work dir in the
# node's mount namespace.
FIXED_PATHS = ("/var/lib/kubelet/device-plugins", "/var/log/containers", "/run/containerd")


class NodeError(ControlPlaneError):
    """A node component failed to start, or a command on the node failed."""


class RealNode:
    def __init__(self, plane: ControlPlane, kubelet_bin: Path, workdir: Path, name: str = "realnode") -> None:
        self.plane = plane
        self.kubelet_bin = kubelet_bin
        self.name = name
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ctd_dir = workdir / "containerd"
        self.socket = self.ctd_dir / "containerd.sock"
        self.kubelet_dir = workdir / "kubelet"
        # The kubelet's Registration socket: FIXED_PATHS[0] in the node, this on the host.
        self.plugin_dir = workdir / "fixed" / "var_lib_kubelet_device-plugins"
        self.pod_resources_socket = self.kubelet_dir / "pod-resources" / "kubelet.sock"
        self.agent_dir = workdir / "flexai"
        # Per node, so two test sessions on one machine never clean up each other's pods.
        self.cgroup_parent = f"flexai-{name}-{os.getpid()}"
        self.procs: dict[str, Process] = {}
        self.timings: dict[str, float] = {}
        self._agent_argv: list[str] | None = None
        self.ip = host_ip()
        self._holder: subprocess.Popen[bytes] | None = None  # keeps the node's mount namespace

    # -- lifecycle

    def start(self, images: Mapping[str, Path]) -> RealNode:
        """containerd, then ``images`` (name -> archive) imported, then the kubelet, until the
        Node is registered and its kubelet healthy."""
        t0 = time.monotonic()
        atexit.register(self.stop)  # a crashed test run must not leave a node behind
        self._make_mount_namespace()
        self._make_cgroup_root()
        self._write_containerd_config()
        self.start_containerd()
        self.timings["containerd"] = time.monotonic() - t0
        t = time.monotonic()
        for archive in images.values():
            self.import_image(archive)
        self.timings["images"] = time.monotonic() - t
        t = time.monotonic()
        self._write_kubelet_files()
        self.start_kubelet()
        self.timings["kubelet"] = time.monotonic() - t
        self.timings["total"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop the agent and the kubelet, kill every container, stop containerd and its
        shims, unmount what is under the work dir and remove the cgroups. Idempotent."""
        for name in ("agent", "kubelet"):
            p = self.procs.get(name)
            if p is not None:
                p.stop()
        if self.procs.get("containerd") is not None and self.procs["containerd"].alive:
            for cid in self._ctr("tasks", "ls", "-q", check=False).stdout.split():
                self._ctr("tasks", "kill", "-s", "SIGKILL", "--all", cid, check=False)
        p = self.procs.get("containerd")
        if p is not None:
            p.stop()
        self._kill_shims()
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()
            self._holder = None
        self._unmount_all()
        self._remove_cgroups()
        atexit.unregister(self.stop)

    # -- the node's mount namespace

    def _make_mount_namespace(self) -> None:
        """A process that holds a private mount namespace, with FIXED_PATHS bound to the work dir."""
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sleep", "infinity"], start_new_session=True
        )
        host_ns = os.readlink("/proc/self/ns/mnt")
        wait_until(lambda: os.readlink(f"/proc/{self._holder.pid}/ns/mnt") != host_ns, 10, "the node's mount namespace")
        for path in FIXED_PATHS:
            Path(path).mkdir(parents=True, exist_ok=True)  # the mount point, left empty on the host
            inside = self.workdir / "fixed" / path.strip("/").replace("/", "_")
            inside.mkdir(parents=True, exist_ok=True)
            r = subprocess.run([*self._in_ns(), "mount", "--bind", str(inside), path], capture_output=True, text=True)
            if r.returncode != 0:
                raise NodeError(f"binding {inside} on {path} in the node's mount namespace: {r.stderr}")

    def _in_ns(self) -> list[str]:
        assert self._holder is not None, "no mount namespace yet"
        return ["nsenter", f"--mount=/proc/{self._holder.pid}/ns/mnt", "--"]

    # -- containerd

    def start_containerd(self) -> None:
        p = self._spawn("containerd", [*self._in_ns(), "containerd", "--config", str(self.ctd_dir / "config.toml")])
        self._wait(
            p,
            lambda: self.socket.exists() and self._ctr("version", check=False).returncode == 0,
            30,
            "containerd socket",
        )

    def restart_containerd(self) -> None:
        """Stop containerd (SIGTERM) and start it again; the shims keep the containers running."""
        p = self.procs.get("containerd")
        if p is not None:
            p.stop()
        self.start_containerd()

    def import_image(self, archive: Path) -> None:
        """Load an OCI or docker archive into the CRI's image store (containerd's k8s.io namespace)."""
        self._ctr("images", "import", "--snapshotter", "overlayfs", str(archive), timeout=300)

    def images(self) -> list[str]:
        return self._ctr("images", "ls", "-q").stdout.split()

    def _write_containerd_config(self) -> None:
        d = self.ctd_dir
        (d / "cni").mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text = f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "{LOOPBACK}"
  stream_server_port = "0"
  # These VMs refuse a negative oom_score_adj even to root: no lower than containerd's own.
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / "runc"}"
  [{cri}.cni]
    bin_dir = "{d / "cni"}"
    conf_dir = "{d / "cni"}"
"""
        (d / "config.toml").write_text(text)

    def _ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.socket), "--namespace", K8S_NS, *args]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise NodeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    # -- kubelet

    def start_kubelet(self) -> None:
        argv = [
            *self._in_ns(),
            str(self.kubelet_bin),
            f"--config={self.kubelet_dir / 'config.yaml'}",
            f"--kubeconfig={self.kubelet_dir / 'kubeconfig'}",
            f"--root-dir={self.kubelet_dir}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.ip}",
            "--v=2",
        ]
        p = self._spawn("kubelet", argv)
        healthz = f"http://{LOOPBACK}:{self.healthz_port}/healthz"
        self._wait(p, lambda: http_ok(healthz) and self._registered(), 90, "kubelet healthy and Node registered")

    def restart_kubelet(self) -> None:
        p = self.procs.get("kubelet")
        if p is not None:
            p.stop()
        self.start_kubelet()

    def _registered(self) -> bool:
        api = self.plane.core_api()
        try:
            api.read_node(self.name)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        finally:
            api.api_client.close()

    def _write_kubelet_files(self) -> None:
        pki = self.plane.pki
        assert pki is not None, "plane not started"
        d = self.kubelet_dir
        (d / "pki").mkdir(parents=True, exist_ok=True)
        # Its identity as the Node authorizer and NodeRestriction know it.
        issue_certificate(
            pki,
            d / "pki" / "client.crt",
            d / "pki" / "client.key",
            f"system:node:{self.name}",
            "system:nodes",
            client=True,
        )
        issue_certificate(
            pki, d / "pki" / "serving.crt", d / "pki" / "serving.key", self.name, server_sans=(self.ip, self.name)
        )
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "node",
            "clusters": [
                {"name": "e2e", "cluster": {"server": self.plane.api_url, "certificate-authority": str(pki.ca_crt)}}
            ],
            "users": [
                {
                    "name": "node",
                    "user": {
                        "client-certificate": str(d / "pki" / "client.crt"),
                        "client-key": str(d / "pki" / "client.key"),
                    },
                }
            ],
            "contexts": [{"name": "node", "context": {"cluster": "e2e", "user": "node"}}],
        }
        (d / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        self.port = free_port()
        self.healthz_port = free_port()
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # The node's own address (the kubelet refuses a loopback node IP); x509 clients only.
            "address": self.ip,
            "port": self.port,
            "readOnlyPort": 0,
            "healthzBindAddress": LOOPBACK,
            "healthzPort": self.healthz_port,
            "tlsCertFile": str(d / "pki" / "serving.crt"),
            "tlsPrivateKeyFile": str(d / "pki" / "serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(pki.ca_crt)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "imageServiceEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_parent}",
            "failCgroupV1": False,  # these machines mount cgroup v1
            "failSwapOn": False,
            "podLogsDir": str(self.workdir / "pod-logs"),
            # Images come from archives, never from a registry: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "nodeStatusUpdateFrequency": "5s",
            "registerNode": True,
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
            "resolvConf": "/etc/resolv.conf",
        }
        (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _make_cgroup_root(self) -> None:
        """The kubelet checks its cgroup root exists in every v1 hierarchy; cpuset children
        start empty in v1, so they get the root's CPUs and memory nodes."""
        for h in self._hierarchies():
            d = h / self.cgroup_parent
            d.mkdir(exist_ok=True)
            if h.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((h / f).read_text())

    def _remove_cgroups(self) -> None:
        for h in CGROUP_ROOT.iterdir():  # the kubelet adds its own under cgroup2's "unified" too
            top = h / self.cgroup_parent
            if h.is_symlink() or not top.is_dir():
                continue
            # Children before parents; a cgroup dir is removed with rmdir, never its files.
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass

    @staticmethod
    def _hierarchies() -> list[Path]:
        return [
            h
            for h in sorted(CGROUP_ROOT.iterdir())
            if h.is_dir() and not h.is_symlink() and h.name != "unified" and (h / "cgroup.procs").exists()
        ]

    # -- flexai-node

    def start_agent(
        self, inventory: Path, hook_library: Path, kubeconfig: Path | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        """flexai-node on a file inventory, as the DaemonSet runs it but in its own PID and
        mount namespaces here (unshare): it sees the containers' processes as another
        namespace does, and its mounts are its own."""
        exe = Path(sys.executable).with_name("flexai-node")
        self.metrics_port = free_port()
        self._agent_argv = [
            *self._in_ns(),
            "unshare",
            "--pid",
            "--fork",
            "--mount",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
            str(exe),
            "--node-name",
            self.name,
            "--kubeconfig",
            str(kubeconfig or self.plane.kubeconfig),
            "--inventory",
            f"file:{inventory}",
            "--device-plugin-dir",
            FIXED_PATHS[0],
            "--pod-resources-socket",
            str(self.pod_resources_socket),
            "--hook-library",
            str(hook_library),
            "--state-dir",
            str(self.agent_dir),
            "--metrics-address",
            LOOPBACK,
            "--metrics-port",
            str(self.metrics_port),
            "--report-every",
            "5",
            *extra_args,
        ]
        self._start_agent()

    def _start_agent(self) -> None:
        assert self._agent_argv is not None, "start_agent() first"
        p = self._spawn("agent", self._agent_argv)
        self._wait(p, self.plugin_registered, 60, "flexai-node registered with the kubelet")

    def restart_agent(self) -> None:
        self.kill_agent(signal.SIGTERM)
        self._start_agent()

    def kill_agent(self, sig: int = signal.SIGKILL) -> None:
        """Stop the agent; with the kubelet running, until the kubelet has seen its devices go."""
        p = self.procs.get("agent")
        if p is not None:
            p.stop(sig=sig, grace=10.0)
        kubelet = self.procs.get("kubelet")
        if kubelet is not None and kubelet.alive:
            wait_until(lambda: self.allocatable(res.VGPU_NUMBER) == 0, 60, "the kubelet to drop the vGPUs")

    def registrations(self) -> int:
        """How many times the running agent registered with the kubelet (from its log)."""
        p = self.procs.get("agent")
        return p.tail(100000, 1 << 22).count(f"registered {res.VGPU_NUMBER} with the kubelet") if p else 0

    def agent_metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The agent's Prometheus samples: (name, sorted labels) -> value."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{LOOPBACK}:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def plugin_registered(self) -> bool:
        """The kubelet has our plugin's devices, healthy: the Node's allocatable shows them."""
        return self.allocatable(res.VGPU_NUMBER) > 0

    def capacity(self, resource: str) -> int:
        return self._node_status(resource, "capacity")

    def allocatable(self, resource: str) -> int:
        return self._node_status(resource, "allocatable")

    def _node_status(self, resource: str, field: str) -> int:
        api = self.plane.core_api()
        try:
            node = api.read_node_status(self.name)
        finally:
            api.api_client.close()
        values = (getattr(node.status, field) if node.status else None) or {}
        return int(values.get(resource, "0"))

    # -- containers

    def container_id(self, pod: str, container: str, namespace: str = "default") -> str:
        """The running container's ID (a restarted container has a new one)."""
        r = self._ctr(
            "containers",
            "ls",
            "-q",
            f'labels."io.kubernetes.pod.name"=={pod},'
            f'labels."io.kubernetes.pod.namespace"=={namespace},'
            f'labels."io.kubernetes.container.name"=={container}',
        )
        running = [c for c in r.stdout.split() if self._task_pid(c)]
        if len(running) != 1:
            raise NodeError(f"{namespace}/{pod}/{container}: {len(running)} running containers")
        return running[0]

    def container_pid(self, pod: str, container: str, namespace: str = "default") -> int:
        """Its first process, as the host sees it."""
        pid = self._task_pid(self.container_id(pod, container, namespace))
        assert pid is not None
        return pid

    def exec(
        self, pod: str, container: str, argv: Sequence[str], namespace: str = "default", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the container, with its process spec (env, user, cwd) and namespaces,
        as `kubectl exec` would; returns the finished process. Its output goes to files in
        the container's /tmp, read from the host through /proc/PID/root: ctr can drop the
        output of a process that exits at once. Needs /bin/sh in the image."""
        cid = self.container_id(pod, container, namespace)
        pid = self._task_pid(cid)
        exec_id = f"t{time.monotonic_ns()}"
        out = f"/tmp/.flexai-exec-{exec_id}"
        wrapped = ["/bin/sh", "-c", 'o=$1; shift; "$@" >"$o.out" 2>"$o.err"; echo $? >"$o.rc"', "sh", out, *argv]
        fifos = self.workdir / "fifo"  # not ctr's default, /run/containerd/fifo
        r = self._ctr(
            "tasks", "exec", "--fifo-dir", str(fifos), "--exec-id", exec_id, cid, *wrapped, check=False, timeout=timeout
        )
        root = Path(f"/proc/{pid}/root")
        try:
            rc = int((root / f"{out[1:]}.rc").read_text())
            stdout = (root / f"{out[1:]}.out").read_text()
            stderr = (root / f"{out[1:]}.err").read_text()
        except (OSError, ValueError) as e:
            raise NodeError(
                f"exec {argv} in {namespace}/{pod}/{container}: no result ({e}); ctr: {r.returncode} {r.stderr.strip()}"
            ) from None
        for suffix in (".rc", ".out", ".err"):
            (root / f"{out[1:]}{suffix}").unlink(missing_ok=True)
        return subprocess.CompletedProcess(list(argv), rc, stdout, stderr)

    def _task_pid(self, cid: str) -> int | None:
        r = self._ctr("tasks", "ls", check=False)
        for line in r.stdout.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 3 and cols[0] == cid and cols[2] == "RUNNING":
                return int(cols[1])
        return None

    # -- logs

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(
            f"----- node {name} ({'running' if p.alive else 'stopped'}) {p.log_path} -----\n{p.tail(lines)}"
            for name, p in self.procs.items()
        )

    # -- internals

    def _spawn(self, name: str, argv: Sequence[str]) -> Process:
        old = self.procs.get(name)
        if old is not None:
            old.stop()
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        p = Process(name, argv, self.log_dir / f"{name}.log", self.workdir, env)
        self.procs[name] = p
        p.start()
        return p

    @staticmethod
    def _wait(p: Process, check: Any, timeout: float, what: str) -> None:
        def ready() -> bool:
            if not p.alive:
                raise NodeError(f"{p.name} exited while waiting for {what}:\n{p.tail(30)}")
            return bool(check())

        try:
            wait_until(ready, timeout, what, interval=0.2)
        except TimeoutError as e:
            raise NodeError(f"{e}\n{p.tail(30)}") from None

    def _kill_shims(self) -> None:
        """The shims outlive containerd by design (they daemonize): find ours by the
        socket they were given, kill them by PID."""
        mine = f"-address {self.socket} ".encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if cmd.startswith(b"/usr/bin/containerd-shim") and mine in cmd:
                try:
                    os.kill(int(d), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _unmount_all(self) -> None:
        """Everything mounted under the work dir (rootfs overlays, sandbox shm), deepest first."""
        prefix = str(self.workdir) + "/"
        for _ in range(3):
            points = []
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    mp = line.split()[4].replace("\\040", " ")
                    if mp.startswith(prefix):
                        points.append(mp)
            if not points:
                return
            for mp in sorted(points, key=len, reverse=True):
                subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def host_ip() -> str:
    """The address of the interface the default route leaves by (connecting a UDP socket
    sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 9))
        ip: str = s.getsockname()[0]
    if ip.startswith("127."):
        raise NodeError("no non-loopback address for the node: the kubelet refuses a loopback node IP")
    return ip
