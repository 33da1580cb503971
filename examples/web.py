"""A small real workload for `cargo xtask demo`: a web server and its clients.

The server runs as one child process, five clients as others (each fetches
the same 1 MiB file twice over loopback TCP), and a helper shell counts the
files. pmet's report then shows every process, who sent and received which
bytes, and what each one cost.
"""

import os
import subprocess
import sys
import tempfile
import time
import urllib.request

CLIENT = """
import sys, urllib.request
total = 0
for _ in range(2):
    with urllib.request.urlopen(sys.argv[1]) as r:
        total += len(r.read())
print(total)
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "blob.bin"), "wb") as f:
            f.write(os.urandom(1 << 20))
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        # "Serving HTTP on 127.0.0.1 port 43215 (http://127.0.0.1:43215/) ..."
        line = server.stdout.readline()
        port = int(line.split(" port ")[1].split()[0])
        url = f"http://127.0.0.1:{port}/blob.bin"
        clients = [
            subprocess.Popen([sys.executable, "-c", CLIENT, url], stdout=subprocess.PIPE, text=True)
            for _ in range(5)
        ]
        got = sum(int(c.communicate()[0]) for c in clients)
        subprocess.run(["sh", "-c", f"ls {root} | wc -l"], check=True, stdout=subprocess.DEVNULL)
        server.terminate()
        server.wait()
        time.sleep(0.1)
    print(f"clients received {got} bytes of payload", file=sys.stderr)
    return 0 if got == 10 * (1 << 20) else 1


if __name__ == "__main__":
    sys.exit(main())
