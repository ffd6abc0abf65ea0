#!/usr/bin/env python3
"""A command in a real pseudo-terminal, for the fake SSM agent.

usage: pty-shell.py COMMAND [ARG...]

stdin carries frames: 1 byte kind, 4 bytes big-endian length, payload.
  kind 0: bytes typed into the terminal
  kind 1: window size, payload = rows (u16 BE), cols (u16 BE)
stdout carries the terminal's raw output. The exit status is the command's
(128 + signal if it was killed). EOF on stdin hangs the terminal up.
"""
import errno
import fcntl
import os
import pty
import select
import struct
import sys
import termios


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def main():
    argv = sys.argv[1:] or ["/bin/sh"]
    pid, master = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm"
        os.environ["PS1"] = "$ "
        os.execvp(argv[0], argv)
    set_size(master, 24, 80)
    stdin = sys.stdin.fileno()
    stdout = sys.stdout.fileno()
    pending = b""
    stdin_open = True
    while True:
        readable = [master] + ([stdin] if stdin_open else [])
        ready, _, _ = select.select(readable, [], [])
        if master in ready:
            try:
                data = os.read(master, 4096)
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                break
            os.write(stdout, data)
        if stdin_open and stdin in ready:
            chunk = os.read(stdin, 65536)
            if not chunk:
                stdin_open = False
                os.close(master)
                break
            pending += chunk
            while len(pending) >= 5:
                kind, length = struct.unpack(">BI", pending[:5])
                if len(pending) < 5 + length:
                    break
                payload, pending = pending[5 : 5 + length], pending[5 + length :]
                if kind == 0:
                    view = memoryview(payload)
                    while view:
                        written = os.write(master, view)
                        view = view[written:]
                elif kind == 1:
                    rows, cols = struct.unpack(">HH", payload)
                    set_size(master, rows, cols)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sys.exit(128 + os.WTERMSIG(status))
    sys.exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
