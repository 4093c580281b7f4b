"""A TCP forwarder that holds every chunk of bytes for DELAY ms in each direction (and 2*DELAY
at connect), for a link with latency on a kernel without netem.

Usage: python3 benches/delay_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS
"""
import asyncio
import sys
import time


async def pipe(reader, writer, delay):
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            queue.put_nowait((time.monotonic() + delay, data))
    except OSError:
        pass
    queue.put_nowait((0, None))
    try:
        await task
    except OSError:
        pass


async def main():
    lhost, lport, thost, tport, delay_ms = sys.argv[1:6]
    delay = int(delay_ms) / 1000

    async def handle(creader, cwriter):
        print("connection", cwriter.get_extra_info("peername"), flush=True)
        await asyncio.sleep(2 * delay)
        try:
            ureader, uwriter = await asyncio.open_connection(thost, int(tport))
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(pipe(creader, uwriter, delay), pipe(ureader, cwriter, delay))
        for w in (cwriter, uwriter):
            try:
                w.close()
            except OSError:
                pass

    server = await asyncio.start_server(handle, lhost, int(lport))
    async with server:
        await server.serve_forever()


asyncio.run(main())
