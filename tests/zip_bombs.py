"""Zip bombs for the metric Space's tests, written in well under a second and a few MB of memory.

An entry is `mebibytes` MiB of zero bytes, deflated: one MiB of zeros compressed with a full flush (which resets
the compressor's history, so every MiB compresses to the same bytes) is repeated, then the stream is closed. Its
CRC-32 is computed without the zeros either: appending a MiB of zeros maps a CRC affinely, a map learnt from 33
CRCs of one MiB. `declared_size` lets an entry claim a smaller size than its stream holds.
"""

import struct
import zlib

MIB = 1 << 20
_ZEROS = bytes(MIB)


def _deflated_zeros(mebibytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(_ZEROS) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * mebibytes + compressor.flush(zlib.Z_FINISH)


def _crc_of_zeros(mebibytes: int) -> int:
    constant = zlib.crc32(_ZEROS, 0)
    columns = [zlib.crc32(_ZEROS, 1 << bit) ^ constant for bit in range(32)]
    crc = 0
    for _ in range(mebibytes):
        linear = 0
        for bit in range(32):
            if crc >> bit & 1:
                linear ^= columns[bit]
        crc = linear ^ constant
    return crc


def write_zip_bomb(path: str, entries: list) -> None:
    """A zip at `path` of `entries`: (name, MiB of zeros[, declared uncompressed size]) each, deflated."""
    local, directory = b"", b""
    for entry in entries:
        name, mebibytes = entry[0], entry[1]
        declared = entry[2] if len(entry) > 2 else mebibytes * MIB
        data = _deflated_zeros(mebibytes)
        crc = _crc_of_zeros(mebibytes)
        encoded = name.encode()
        fields = struct.pack("<HHHHHLLLHH", 20, 0, 8, 0, 0x21, crc, len(data), declared, len(encoded), 0)
        directory += (
            b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHLL", 0, 0, 0, 0, len(local)) + encoded
        )
        local += b"PK\x03\x04" + fields + encoded + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), len(local), 0)
    with open(path, "wb") as f:
        f.write(local + directory + end)
