"""The CLI's own output when its reader is gone (actors/lifecycle.py): ``jobline serve
... | tee log`` and a Ctrl-C that ends ``tee`` too must not end serve before it has
stopped the app (a newcomer saw serve die mid-stop, its ledger not checkpointed)."""

from __future__ import annotations

import os

from actors.lifecycle import _print


def test_a_line_for_a_closed_pipe_is_dropped_and_the_next_ones_go_to_dev_null() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (tee) is gone
    stream = os.fdopen(write_end, "w")
    try:
        _print("stopping app 'jobline'", stream)  # BrokenPipeError inside: not raised
        _print("ledger closed", stream)
        assert os.path.samefile(f"/proc/self/fd/{stream.fileno()}", os.devnull)
    finally:
        stream.close()


def test_a_line_for_a_live_pipe_is_written() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    _print("app 'jobline' stopped", stream)
    stream.close()
    with os.fdopen(read_end) as reader:
        assert reader.read() == "app 'jobline' stopped\n"
