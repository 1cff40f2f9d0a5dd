"""Trial 4: a loopback server that answers 503 to the first 2 requests for each file, then
the file; `alexnet-jax download` with its mirrors pointed at it.

usage: python busy_server.py RELEASE_FILES_DIR OUT_DIR
"""

import http.server
import sys
import threading
from pathlib import Path

data = Path(sys.argv[1])
seen: dict[str, int] = {}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.rsplit("/", 1)[1]
        seen[name] = seen.get(name, 0) + 1
        if seen[name] <= 2:
            self.send_error(503)
            return
        body = (data / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()

from alexnet_jax.cli import main  # noqa: E402
from alexnet_jax.data import download  # noqa: E402

url = f"http://127.0.0.1:{server.server_address[1]}/"
download.BASE_URLS = (url, url + "mirror/")
print(f"$ alexnet-jax download --dir {sys.argv[2]}   (its mirrors replaced by {url}, which "
      "answers 503 twice per file)")
sys.exit(main(["download", "--dir", sys.argv[2]]))
