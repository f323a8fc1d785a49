"""Real servers the tests (and the benchmarks) start on loopback ports and stop after."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

DAV_MODULE = Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")

NGINX_CONF = """\
load_module {module};
user root;
worker_processes 2;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    client_max_body_size 200m;
    server {{
        listen 127.0.0.1:{port};
        # Write-once: a PUT over an existing file is 412 (nginx's dav module would overwrite it).
        location /cache/ {{
            alias {root}/;
            dav_methods PUT;
            create_full_put_path on;
            set $put "";
            if ($request_method = PUT) {{ set $put 1; }}
            if (-e $request_filename) {{ set $put "${{put}}1"; }}
            if ($put = 11) {{ return 412; }}
        }}
        # A consumer's view: reads only.
        location /ro/ {{
            alias {root}/;
            limit_except GET HEAD {{ deny all; }}
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """A private nginx on a loopback port serving a folder at /cache/ (PUT, write-once) and /ro/."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.root = prefix / "dav"
        self.root.mkdir(parents=True)
        (prefix / "body").mkdir()
        self.port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(module=DAV_MODULE, prefix=prefix, port=self.port, root=self.root))
        self.process = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(prefix)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"nginx did not start: {self.process.stderr.read().decode()[-2000:]}")
        self.url = f"http://127.0.0.1:{self.port}/cache"
        self.ro = f"http://127.0.0.1:{self.port}/ro"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def ac(self, key: str) -> Path:
        return self.root / "ac" / f"{key}.json"
