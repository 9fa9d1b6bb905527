"""A TCP proxy on loopback that can go silent: what a NAT or load balancer does when it drops a
connection's state, or a partition. ``freeze()`` stops forwarding on every connection open at
that moment without closing any (the peers see nothing at all); ``lose_next_reply()`` lets each
open connection carry one more request to the server and then breaks it instead of returning the
answer (a connection lost after the server acted). Connections made afterwards are forwarded as
usual."""

import socket
import threading


class FreezableProxy:
    def __init__(self, target_host, target_port):
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections = []  # (client socket, upstream socket, frozen event)
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            frozen, cut = threading.Event(), threading.Event()
            with self._lock:
                self._connections.append((client, upstream, frozen, cut))
            for source, sink, reply in ((client, upstream, None), (upstream, client, cut)):
                threading.Thread(
                    target=self._pump, args=(source, sink, frozen, reply), daemon=True
                ).start()

    @staticmethod
    def _pump(source, sink, frozen, cut=None):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if frozen.is_set():
                    threading.Event().wait()  # hold it forever, as a dead path does
                if cut is not None and cut.is_set():
                    break  # the server's answer is dropped, and the connection with it
                sink.sendall(data)
        except OSError:
            pass
        if not frozen.is_set():
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def freeze(self):
        """Every open connection goes silent: nothing forwarded, nothing closed."""
        with self._lock:
            for _client, _upstream, frozen, _cut in self._connections:
                frozen.set()

    def lose_next_reply(self):
        """Every open connection loses the server's next answer, and is broken there."""
        with self._lock:
            for _client, _upstream, _frozen, cut in self._connections:
                cut.set()

    def close(self):
        self._listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for client, upstream, _frozen, _cut in connections:
            client.close()
            upstream.close()
