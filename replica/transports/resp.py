"""The Redis-protocol (RESP2) transport: Jylis's MVREG and TREG for any Redis client.

Requests are parsed by `hiredis.Reader`.  Every complete command of one
`data_received` chunk is answered, and the replies of the chunk leave in a
single `transport.write`, so pipelined clients get batched replies exactly as
on the JSON port.  Backpressure and reply holding work as in `replica.transports.tcp`: a
connection whose unsent replies pass the high-water mark stops being read,
and when the node commits synchronously a chunk's replies wait for the
commit that makes its writes durable (a failed commit turns every non-error
reply of the chunk into an error).

The data types' commands (`MVREG`, `TREG`, ...) are turned into the same
requests the JSON port takes, by the types' handler modules
(`replica.node.handlers`, `RESP_COMMANDS`), and answered by the same
handlers; README.md lists them.  A read of an absent key is an empty array.
PING, ECHO, QUIT, HELLO, CLIENT, COMMAND and SELECT 0 are answered here, the
way redis-cli and redis-py expect.  Values set here are stored as JSON
strings; stored values that are not strings are returned as their JSON text.

With a client password (`[cluster] password_file`) a connection sends
`AUTH <password>`, `AUTH default <password>` or `HELLO <2|3> AUTH default
<password>` first; until then every command but those and QUIT gets
`-NOAUTH Authentication required.` and a wrong password `-WRONGPASS ...`,
Redis's own words, so Redis clients raise their usual exceptions.

Size limit: a request whose bytes so far pass `max_line_bytes` plus a small
allowance for headers, or any argument longer than `max_line_bytes`, gets an
error and closes the connection; the first check also stops an array of
countless small elements.  (`hiredis.Reader` itself only caps bulk
strings at 512 MiB; its `maxbuf` only decides when an idle buffer is freed,
so the limit is checked here.)  A protocol error also closes the connection;
every other error leaves it usable.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import hiredis
import orjson

from replica.errors import ErrorCode
from replica.node.context import Body
from replica.node.handlers import RESP_COMMANDS
from replica.node.quorums import Deferred, coordinate
from replica.node.resp_terms import Integer, RespError, Simple, Term, Value, Values, arity, ok
from replica.node.router import Node
from replica.transports.held_replies import Reply
from replica.transports.tcp import ServedConnection, TcpServer

log = logging.getLogger("replica.transports.resp")

HEADER_ALLOWANCE = 4096
"""Bytes beyond `max_line_bytes` an incomplete request may buffer: its array and
bulk headers, plus up to 1 KiB of parsed input hiredis keeps before compacting."""

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
NULL3 = b"_\r\n"  # RESP3's null, for clients that said HELLO 3
EMPTY_ARRAY = b"*0\r\n"
NOAUTH = b"-NOAUTH Authentication required.\r\n"  # Redis's own texts, which clients know
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
HELLO_NOAUTH = (
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
    "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
    "select the RESP protocol version at the same time"
)
NO_PASSWORD = (
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)
BEFORE_AUTH = frozenset({b"AUTH", b"HELLO", b"QUIT"})

Args = list[bytes]


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def array(items: list[bytes]) -> bytes:
    return b"*%d\r\n%s" % (len(items), b"".join(items))


def error(text: str) -> bytes:
    clean = text.replace("\r", " ").replace("\n", " ")
    return b"-" + clean.encode("utf-8", "replace") + b"\r\n"


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def encode(term: Term) -> bytes:
    """The RESP encoding of a reply's terms (see `replica.node.resp_terms.Term`)."""
    if type(term) is Values:
        return array([bulk(_value_bytes(value)) for value in term.values])
    if type(term) is Simple:
        return b"+%s\r\n" % term.text.encode()
    if type(term) is Integer:
        return integer(term.value)
    if type(term) is list:
        return array([encode(item) for item in term])
    if type(term) is Value:
        return bulk(_value_bytes(term.value))
    return NIL


def _value_bytes(value: Any) -> bytes:
    """A stored value as a Redis client sees it: a string as it is, the rest as its JSON."""
    return value.encode() if type(value) is str else orjson.dumps(value)


def _encoded(reply: Body | None, reply_of: Callable[[Body], Term]) -> bytes:
    """A data type's reply body as RESP: an absent key is an empty array, a write is +OK."""
    if reply is None:
        return error("ERR no reply")
    if reply["type"] == "error":
        if reply["code"] == ErrorCode.KEY_DOES_NOT_EXIST:
            return EMPTY_ARRAY
        return error(f"ERR {reply['text']}")
    if reply_of is ok:  # what every write answers
        return OK
    return encode(reply_of(reply))


class Commands:
    """What a RESP connection can ask of a node; one instance per connection."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.client_name: bytes | None = None
        self.protocol = 2
        self.quit = False
        self.password = node.settings.password
        self.authenticated = self.password is None
        self.table: dict[bytes, Callable[[Args], bytes]] = {
            b"PING": self.ping,
            b"ECHO": self.echo,
            b"QUIT": self.quit_command,
            b"AUTH": self.auth,
            b"HELLO": self.hello,
            b"CLIENT": self.client,
            b"COMMAND": self.command,
            b"SELECT": self.select,
        }

    def execute(self, request: Args) -> Reply:
        """The reply to one command (its name first); errors become error replies.

        A data type's command runs under the cluster's `w` or `r`, so its reply
        may be deferred until the quorum is known.
        """
        name = request[0]
        upper = name.upper()
        if not self.authenticated and upper not in BEFORE_AUTH:
            return NOAUTH
        try:
            command = RESP_COMMANDS.get(upper)
            if command is None:
                handler = self.table.get(upper)
                if handler is None:
                    return error(f"ERR unknown command '{_name(name)}'")
                return handler(request[1:])
            # A data type's command: run by the same handler as its JSON request.
            data_handler, body, reply_of = command(request[1:])
        except RespError as exc:
            return error(str(exc))
        reply = coordinate(self.node, data_handler, body, None)
        if isinstance(reply, Deferred):
            return reply.then(lambda reply: _encoded(reply, reply_of))
        return _encoded(reply, reply_of)

    # -- what clients send by habit -----------------------------------------------------

    def ping(self, args: Args) -> bytes:
        if len(args) > 1:
            raise RespError("ERR wrong number of arguments for 'ping' command")
        return bulk(args[0]) if args else b"+PONG\r\n"

    def echo(self, args: Args) -> bytes:
        arity("echo", args, 1)
        return bulk(args[0])

    def quit_command(self, args: Args) -> bytes:
        self.quit = True
        return OK

    def auth(self, args: Args) -> bytes:
        """`AUTH <password>` or `AUTH default <password>`: the only user is `default`."""
        if len(args) not in (1, 2):
            raise RespError("ERR wrong number of arguments for 'auth' command")
        if self.password is None and len(args) == 1:
            raise RespError(NO_PASSWORD)
        self._check_password(args[0] if len(args) == 2 else b"default", args[-1])
        return OK

    def _check_password(self, user: bytes, password: bytes) -> None:
        """Authenticate the connection, or RespError WRONGPASS (counted in `status`)."""
        expected = self.password
        if expected is None and user == b"default":
            return  # Redis's default user without a password takes any
        right = hmac.compare_digest(password, expected or b"")
        if user != b"default" or not right:
            self.node.refusals.auth_failures += 1
            raise RespError(WRONGPASS)
        self.authenticated = True

    def hello(self, args: Args) -> bytes:
        if not self.authenticated and b"AUTH" not in (arg.upper() for arg in args[1:]):
            raise RespError(HELLO_NOAUTH)
        if args:
            version = args[0]
            if not version.isdigit():
                raise RespError("ERR Protocol version is not an integer or out of range")
            if int(version) not in (2, 3):
                raise RespError("NOPROTO unsupported protocol version")
            options = args[1:]
            while options:
                option = options[0].upper()
                if option == b"SETNAME" and len(options) >= 2:
                    self.client_name = options[1]
                    options = options[2:]
                elif option == b"AUTH" and len(options) >= 3:
                    self._check_password(options[1], options[2])
                    options = options[3:]
                else:
                    raise RespError(f"ERR Syntax error in HELLO option '{_name(options[0])}'")
            # Every reply this server sends is the same in RESP3 but for nulls and
            # HELLO's own map, so RESP3 clients (redis-py 8 asks for it) work as they are.
            self.protocol = int(version)
        info = {
            b"server": bulk(b"replica"),
            b"version": bulk(b"0.1.0"),
            b"proto": integer(self.protocol),
            b"id": integer(0),
            b"mode": bulk(b"standalone"),
            b"role": bulk(b"master"),
            b"modules": EMPTY_ARRAY,
        }
        parts = [part for name, reply in info.items() for part in (bulk(name), reply)]
        if self.protocol == 3:
            return b"%%%d\r\n" % len(info) + b"".join(parts)
        return array(parts)

    def client(self, args: Args) -> bytes:
        sub = args[0].upper() if args else b""
        if sub == b"SETINFO":
            arity("client|setinfo", args, 3)
            return OK
        if sub == b"SETNAME":
            arity("client|setname", args, 2)
            self.client_name = args[1] or None
            return OK
        if sub == b"GETNAME":
            arity("client|getname", args, 1)
            if self.client_name is None:
                return NULL3 if self.protocol == 3 else NIL
            return bulk(self.client_name)
        if sub == b"ID":
            return integer(0)
        if not args:
            raise RespError("ERR wrong number of arguments for 'client' command")
        raise RespError(f"ERR unknown subcommand '{_name(args[0])}' for 'CLIENT'")

    def command(self, args: Args) -> bytes:
        if args and args[0].upper() == b"COUNT":
            return integer(0)
        return EMPTY_ARRAY

    def select(self, args: Args) -> bytes:
        arity("select", args, 1)
        raw = args[0]
        digits = raw[1:] if raw.startswith(b"-") else raw
        if not (digits.isdigit() and digits.isascii()):
            raise RespError("ERR value is not an integer or out of range")
        if int(digits) != 0:
            raise RespError("ERR DB index is out of range")
        return OK


class RespConnection(ServedConnection):
    """One accepted Redis-protocol connection."""

    kind = "RESP connection"

    def __init__(self, node: Node, connections: set[Any]) -> None:
        super().__init__(node, connections)
        self.limit = node.settings.max_line_bytes
        # `False` for "incomplete": a null array or bulk string (`*-1`, `$-1`) reads as None.
        self.reader = hiredis.Reader(notEnoughData=False)
        self.pending = 0
        self.commands = Commands(node)

    def replies_to(self, data: bytes) -> tuple[list[Reply], bool]:
        """The replies to every complete command in the input so far; True to close after."""
        replies: list[Reply] = []
        execute, join = self.commands.execute, b"".join
        self.reader.feed(data)
        completed = False
        while True:
            try:
                request = self.reader.gets()
            except hiredis.ProtocolError as exc:
                log.info("closing RESP connection %s: protocol error: %s", self.peer, exc)
                replies.append(error(f"ERR Protocol error: {exc}"))
                return replies, True
            if request is False:
                break
            completed = True
            try:  # joining is the one check of both shape and size: anything but bytes fails
                size = len(join(request)) if type(request) is list and request else -1
            except TypeError:
                size = -1
            if size < 0:
                replies.append(error("ERR Protocol error: expected an array of bulk strings"))
                continue
            if size > self.limit:
                replies.append(self._too_long())
                return replies, True
            try:
                replies.append(execute(request))
            except Exception:  # every command answers for itself; this is a bug
                log.exception("failed to handle a RESP command from %s", self.peer)
                replies.append(error("ERR internal error"))
            if self.commands.quit:
                return replies, True
        # Bytes of the incomplete request: all of them since the last complete
        # one, counting the elements of a long array hiredis has already taken
        # out of its buffer.
        if self.slow_line.armed is not None or self.reader.has_data():
            self.slow_line.update(completed)
        if completed:
            self.pending = min(len(data), self.reader.len())
        else:
            self.pending += len(data)
        if self.pending > self.limit + HEADER_ALLOWANCE:
            replies.append(self._too_long())
            return replies, True
        return replies, False

    def _too_long(self) -> bytes:
        log.info("closing RESP connection %s: request over max_line_bytes", self.peer)
        return error(f"ERR request over max_line_bytes ({self.limit})")

    def holds_partial(self) -> bool:
        return bool(self.reader.has_data())

    def over_limit(self) -> bytes:
        return error("ERR max number of clients reached")  # Redis's text

    def broken(self) -> bytes:
        return error("ERR internal error")

    def not_durable(self, replies: list[bytes], failure: str) -> list[bytes]:
        failed = error(f"ERR write not durable: {failure}")
        return [reply if reply.startswith(b"-") else failed for reply in replies]


async def serve_resp(node: Node, host: str, port: int) -> TcpServer:
    """Listen for Redis clients on `host:port` and answer them with `node`."""
    server = TcpServer(node, RespConnection)
    await server.start(host, port)
    return server
