#!/usr/bin/env python3
"""A TCP proxy for bench/soak.sh that can turn into a black hole: the shell
version of tests/it/support/proxy.rs.

    faultproxy.py LISTEN_PORT UPSTREAM_HOST:PORT

SIGUSR1: black hole (connections are accepted and kept, no byte passes
either way, as with a dead host or a dropped route); SIGUSR2: pass again
(held bytes are delivered).
"""
import asyncio
import signal
import sys

passing = asyncio.Event()


async def pump(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await passing.wait()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_reader, client_writer, host, port):
    try:
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        pump(client_reader, server_writer), pump(server_reader, client_writer)
    )


async def main():
    listen = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    passing.set()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, passing.clear)
    loop.add_signal_handler(signal.SIGUSR2, passing.set)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, host, int(port)), "127.0.0.1", listen
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
