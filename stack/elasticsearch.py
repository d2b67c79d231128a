"""Elasticsearch 8.19 for the local stack: one node inside a JVM started by a small launcher.

Maven resolves the server and the Netty4 transport (``stack/elasticsearch/pom.xml``) into a
classpath file, javac compiles the launcher (``stack/elasticsearch/src``) against exactly that
classpath, and the node runs with a bounded heap. Both build outputs live under the stack dir
and are redone only when their inputs change. This node carries the core server only: no
painless, no reindex family, no analysis-common.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

from stack.apt import apt_install
from stack.config import HOST
from stack.errors import StackError
from stack.processes import (
    error_line,
    pid_alive,
    process_cmdline,
    remove_file,
    run_logged,
    running_pid,
    spawn,
    stop_pid,
    wait_for,
    write_pidfile,
)
from stack.service import Service

VERSION = "8.19.9"
SOURCE_DIR = Path(__file__).resolve().parent / "elasticsearch"
POM = SOURCE_DIR / "pom.xml"
JAVA_SOURCES = SOURCE_DIR / "src"
LAUNCHER_CLASS = "loyalty.stack.ElasticsearchLauncher"
LAUNCHER_MARKER = LAUNCHER_CLASS
JAVA_RELEASE = "17"
JDK_GLOB = "/usr/lib/jvm/java-17-openjdk-*"
JDK_PACKAGE = "openjdk-17-jdk-headless"
MAVEN_PACKAGE = "maven"
CLUSTER_NAME = "loyalty-stack"

HEAP = ["-Xms1g", "-Xmx1g"]
JVM_OPTIONS = [
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
    # The launcher closes the node on SIGTERM; log4j's own hook would close logging first.
    "-Dlog4j.shutdownHookEnabled=false",
    "-Dlog4j2.disable.jmx=true",
]

MAVEN_TIMEOUT_SECONDS = 600.0
JAVAC_TIMEOUT_SECONDS = 300.0
READY_TIMEOUT_SECONDS = 180.0
STOP_TIMEOUT_SECONDS = 60.0
HTTP_TIMEOUT_SECONDS = 5.0


class Elasticsearch(Service):
    name = "elasticsearch"
    heap: ClassVar[tuple[str, ...]] = tuple(HEAP)
    _jdk_home: Path | None = None

    @property
    def port(self) -> int:
        return self.config.es_port

    @property
    def home(self) -> Path:
        return self.config.stack_dir / "elasticsearch"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def build_dir(self) -> Path:
        """Where the classpath file and the compiled launcher live (every node shares them)."""
        return self.config.stack_dir / "elasticsearch"

    @property
    def build_log(self) -> Path:
        return self.config.logs_dir / "elasticsearch-build.log"

    @property
    def classpath_file(self) -> Path:
        return self.build_dir / "classpath.txt"

    @property
    def classes_dir(self) -> Path:
        return self.build_dir / "classes"

    def version(self) -> str:
        return VERSION

    def running_pid(self) -> int | None:
        pid = running_pid(self.pidfile, LAUNCHER_MARKER)
        # The launcher's arguments name its own path.home: a node of another stack dir is not ours.
        if pid is not None and f"path.home={self.home}" not in process_cmdline(pid):
            return None
        return pid

    def prepare(self) -> None:
        jdk = _find_jdk()
        if jdk is None:
            self.step(f"apt-get install {JDK_PACKAGE}",
                      lambda: self._install(JDK_PACKAGE, "a JDK 17"))
            jdk = _find_jdk()
            if jdk is None:
                raise StackError(self.name, f"no JDK 17 found after installing {JDK_PACKAGE}")
        self._jdk_home = jdk
        if shutil.which("mvn") is None:
            self.step(f"apt-get install {MAVEN_PACKAGE}",
                      lambda: self._install(MAVEN_PACKAGE, "Maven"))
        if not self._classpath_is_current():
            self.step("maven resolve", self._resolve_classpath)
        if not self._classes_are_current():
            self.step("javac launcher", self._compile)

    def launch(self) -> None:
        for folder in (self.data_dir, self.home / "logs", self.home / "home", self.home / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch(exist_ok=True)
        log_offset = self.log_path.stat().st_size
        classpath = f"{self.classes_dir}{os.pathsep}{self.classpath_file.read_text().strip()}"
        argv = [
            str(self._jdk / "bin" / "java"),
            *self.heap,
            *JVM_OPTIONS,
            f"-Djava.io.tmpdir={self.home / 'tmp'}",
            "-cp", classpath,
            LAUNCHER_CLASS,
            *(f"{key}={value}" for key, value in self._node_settings().items()),
        ]
        process = spawn(argv, self.log_path, cwd=self.home)
        write_pidfile(self.pidfile, process.pid)

        def settled() -> bool:
            return process.poll() is not None or self._is_ready()

        ready = wait_for(settled, READY_TIMEOUT_SECONDS) and process.poll() is None
        if not ready:
            stop_pid(process.pid, timeout=STOP_TIMEOUT_SECONDS, child=process)
            remove_file(self.pidfile)
            detail = error_line(self.log_path, log_offset)
            detail = detail or f"not ready after {READY_TIMEOUT_SECONDS:.0f}s"
            raise StackError(self.name, f"did not start: {detail} (see {self.log_path})")
        served = self._served_version()
        if served != VERSION:
            stop_pid(process.pid, timeout=STOP_TIMEOUT_SECONDS, child=process)
            remove_file(self.pidfile)
            raise StackError(self.name, f"GET / reports version {served}, expected {VERSION}")

    def stop(self) -> bool:
        pid = self.running_pid()
        if pid is None:
            remove_file(self.pidfile)
            return False
        stop_pid(pid, timeout=STOP_TIMEOUT_SECONDS)
        if pid_alive(pid):
            raise StackError(self.name, f"pid {pid} did not stop")
        remove_file(self.pidfile)
        return True

    def _node_settings(self) -> dict[str, str]:
        return {
            "cluster.name": CLUSTER_NAME,
            "node.name": CLUSTER_NAME,
            "path.home": str(self.home),
            "path.data": str(self.data_dir),
            "path.logs": str(self.home / "logs"),
            "network.host": HOST,
            "http.port": str(self.port),
            "discovery.type": "single-node",
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            # Tests drop their indices by prefix wildcard, which 8.x refuses by default.
            "action.destructive_requires_name": "false",
            **dict(self.config.es_node_settings),
        }

    @property
    def _jdk(self) -> Path:
        if self._jdk_home is None:
            self._jdk_home = _find_jdk()
        if self._jdk_home is None:
            raise StackError(self.name, "no JDK 17 found")
        return self._jdk_home

    def _install(self, package: str, needed_for: str) -> None:
        apt_install(self.name, [package], self.config.logs_dir / "install.log",
                    needed_for=needed_for)

    def _classpath_is_current(self) -> bool:
        if _stamp_of(self.classpath_file) != _digest(POM.read_bytes()):
            return False
        jars = self.classpath_file.read_text().strip().split(os.pathsep)
        return all(Path(jar).is_file() for jar in jars if jar)

    def _resolve_classpath(self) -> None:
        self.build_dir.mkdir(parents=True, exist_ok=True)
        partial = self.classpath_file.with_suffix(".partial")
        argv = [
            "mvn", "-B", "-f", str(POM),
            "dependency:build-classpath",
            "-Dmdep.includeScope=runtime",
            f"-Dmdep.outputFile={partial}",
        ]
        try:
            run_logged(self.name, argv, self.build_log,
                       what=f"maven resolve of Elasticsearch {VERSION}",
                       cwd=self.build_dir, timeout=MAVEN_TIMEOUT_SECONDS)
            if not partial.is_file() or not partial.read_text().strip():
                raise StackError(self.name, f"maven wrote no classpath (see {self.build_log})")
        except StackError:
            remove_file(partial)
            raise
        partial.replace(self.classpath_file)
        _write_stamp(self.classpath_file, _digest(POM.read_bytes()))

    def _classes_are_current(self) -> bool:
        return _stamp_of(self.classes_dir) == self._sources_digest()

    def _compile(self) -> None:
        shutil.rmtree(self.classes_dir, ignore_errors=True)
        self.classes_dir.mkdir(parents=True)
        sources = sorted(str(path) for path in JAVA_SOURCES.rglob("*.java"))
        argv = [
            str(self._jdk / "bin" / "javac"),
            "--release", JAVA_RELEASE,
            "-encoding", "UTF-8",
            "-d", str(self.classes_dir),
            "-cp", self.classpath_file.read_text().strip(),
            *sources,
        ]
        try:
            run_logged(self.name, argv, self.build_log, what="javac of the launcher",
                       timeout=JAVAC_TIMEOUT_SECONDS)
        except StackError:
            shutil.rmtree(self.classes_dir, ignore_errors=True)
            raise
        _write_stamp(self.classes_dir, self._sources_digest())

    def _sources_digest(self) -> str:
        hasher = hashlib.sha256()
        for path in sorted(JAVA_SOURCES.rglob("*.java")):
            hasher.update(str(path.relative_to(JAVA_SOURCES)).encode())
            hasher.update(path.read_bytes())
        hasher.update(self.classpath_file.read_bytes() if self.classpath_file.exists() else b"")
        hasher.update(str(self._jdk).encode())
        return hasher.hexdigest()

    def _is_ready(self) -> bool:
        status = _get_json(self.port, "/_cluster/health?wait_for_status=yellow&timeout=1s")
        return status is not None and status.get("status") in ("yellow", "green")

    def _served_version(self) -> str:
        root = _get_json(self.port, "/")
        version = root.get("version") if root else None
        number = version.get("number") if isinstance(version, dict) else None
        return str(number) if number else "unknown"


def _get_json(port: int, path: str) -> dict[str, object] | None:
    try:
        url = f"http://{HOST}:{port}{path}"
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as reply:
            body = json.loads(reply.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _find_jdk() -> Path | None:
    for candidate in sorted(glob.glob(JDK_GLOB)):
        home = Path(candidate)
        if (home / "bin" / "javac").is_file():
            return home
    return None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stamp_of(target: Path) -> str | None:
    try:
        return target.with_name(target.name + ".sha256").read_text().strip()
    except OSError:
        return None


def _write_stamp(target: Path, digest: str) -> None:
    target.with_name(target.name + ".sha256").write_text(digest + "\n")
