"""A ProxyCommand for the tests (as ``nc HOST PORT`` would be): stdin -> a TCP connection ->
stdout, until either side closes."""

import os
import socket
import sys
import threading


def main() -> None:
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))

    def upstream() -> None:
        while True:
            data = os.read(0, 65536)
            if not data:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(data)

    threading.Thread(target=upstream, daemon=True).start()
    while True:
        data = conn.recv(65536)
        if not data:
            return
        os.write(1, data)


if __name__ == "__main__":
    main()
