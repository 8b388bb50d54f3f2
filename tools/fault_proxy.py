"""A TCP proxy that breaks an AMQP 0-9-1 connection at a chosen frame, for the tests.

It stands between a script and a private broker and reads the frames going each way: the
protocol header, then each frame (type, channel, size, payload, end byte), each named
("Connection.Start", "Basic.Ack", "body", "heartbeat"...). The fault is chosen by kind,
not by position: `at` is (name, n), the n-th frame of that name (from 1), so that a
heartbeat that comes in between shifts nothing. There it acts:

    reset    close both sockets at once with a TCP reset, instead of passing the frame on
    close    close both sockets in the ordinary way (FIN), instead of passing it on
    silent   pass nothing on from then, either way, and keep both sockets open
    delay    hold that frame, and what follows it that way, for `delay` seconds

Only the first time frame `at` comes does it act; later connections pass untouched, so a
script that reconnects through the proxy gets through. `seen` lists every frame read:
(number from 0, direction ">" or "<", name); `seen_at`, when each was read.
"""

import socket
import struct
import threading
import time

from private_broker import free_port

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = 0xCE
# The methods a script's connection uses, by (class id, method id), for the frame table.
METHODS = {
    (10, 10): "Connection.Start",
    (10, 11): "Connection.StartOk",
    (10, 30): "Connection.Tune",
    (10, 31): "Connection.TuneOk",
    (10, 40): "Connection.Open",
    (10, 41): "Connection.OpenOk",
    (10, 50): "Connection.Close",
    (10, 51): "Connection.CloseOk",
    (10, 60): "Connection.Blocked",
    (20, 10): "Channel.Open",
    (20, 11): "Channel.OpenOk",
    (20, 40): "Channel.Close",
    (20, 41): "Channel.CloseOk",
    (50, 10): "Queue.Declare",
    (50, 11): "Queue.DeclareOk",
    (60, 10): "Basic.Qos",
    (60, 11): "Basic.QosOk",
    (60, 20): "Basic.Consume",
    (60, 21): "Basic.ConsumeOk",
    (60, 30): "Basic.Cancel",
    (60, 31): "Basic.CancelOk",
    (60, 40): "Basic.Publish",
    (60, 50): "Basic.Return",
    (60, 60): "Basic.Deliver",
    (60, 70): "Basic.Get",
    (60, 71): "Basic.GetOk",
    (60, 72): "Basic.GetEmpty",
    (60, 80): "Basic.Ack",
    (60, 90): "Basic.Reject",
    (60, 120): "Basic.Nack",
    (85, 10): "Confirm.Select",
    (85, 11): "Confirm.SelectOk",
}


def frame_name(kind, payload):
    if kind == 1:
        class_id, method_id = struct.unpack(">HH", payload[:4])
        return METHODS.get((class_id, method_id), f"method {class_id}.{method_id}")
    return {2: "header", 3: "body", 8: "heartbeat"}.get(kind, f"frame type {kind}")


class FaultProxy:
    """Listens on 127.0.0.1:`port` and forwards each connection to 127.0.0.1:`target`."""

    def __init__(self, target, at=None, action=None, delay=0.0):
        assert action in (None, "reset", "close", "silent", "delay")
        self.target, self.at, self.action, self.delay = target, at, action, delay
        self.port = free_port()
        self.seen = []
        self.seen_at = []  # by time.monotonic()
        self.acted = threading.Event()
        self._lock = threading.Lock()
        self._sockets = []
        self._silenced = set()  # the sockets of a connection gone silent
        self._counts = {}  # frames read so far, by name
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, options=""):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F{options}"

    def stop(self):
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self.target))
            pair = [client, broker]
            with self._lock:
                self._sockets += pair
            for source, sink, direction in ((client, broker, ">"), (broker, client, "<")):
                args = (source, sink, direction, pair)
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, source, sink, direction, pair):
        """Read whole frames from `source` and pass each on to `sink`, unless it is time
        to act."""
        buffer = b""
        header_left = direction == ">"  # the client sends the protocol header first
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._close(pair)
                return
            buffer += data
            while True:
                if header_left:
                    if len(buffer) < len(PROTOCOL_HEADER):
                        break
                    size, name = len(PROTOCOL_HEADER), "protocol header"
                    header_left = False
                else:
                    if len(buffer) < 7:
                        break
                    kind, _, length = struct.unpack(">BHI", buffer[:7])
                    size = 7 + length + 1
                    if len(buffer) < size:
                        break
                    name = frame_name(kind, buffer[7 : 7 + length])
                frame, buffer = buffer[:size], buffer[size:]
                if not self._pass(frame, direction, name, sink, pair):
                    return

    def _pass(self, frame, direction, name, sink, pair):
        """Forward one frame, or act on it; False once this connection is broken."""
        with self._lock:
            if sink in self._silenced:
                return True  # read on, pass nothing
            self.seen.append((len(self.seen), direction, name))
            self.seen_at.append(time.monotonic())
            self._counts[name] = self._counts.get(name, 0) + 1
            act = (name, self._counts[name]) == self.at and not self.acted.is_set()
            if act:
                self.acted.set()
                if self.action == "silent":
                    self._silenced.update(pair)
                    return True
                if self.action in ("reset", "close"):
                    if self.action == "reset":
                        for sock in pair:
                            sock.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                    self._close(pair)
                    return False
        if act:  # delay: this direction waits, the other goes on
            time.sleep(self.delay)
        try:
            sink.sendall(frame)
        except OSError:
            self._close(pair)
            return False
        return True

    def _close(self, pair):
        for sock in pair:
            if sock in self._silenced:
                continue
            try:
                sock.close()
            except OSError:
                pass
