"""HTTP/2 header fields apart from I/O (corral.worker.http2.fields): HPACK decoding against RFC 7541's own examples
(Appendix C) and the `hpack` library's encoder, the dynamic-table change flag the connection keeps request
heads by, the RFC 9113 §8 request checks, and response blocks decoded back by `hpack`'s decoder."""

from __future__ import annotations

import pytest
from hpack import Decoder as HpackDecoder
from hpack import Encoder as HpackEncoder

from corral.worker.http2.fields import (
    Decoder,
    HeaderListTooLarge,
    HpackError,
    MalformedHeaders,
    check_trailers,
    fields_block,
    request_head,
    response_block,
)

REQUESTS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")],
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
        (b"cache-control", b"no-cache"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/index.html"),
        (b":authority", b"www.example.com"),
        (b"custom-key", b"custom-value"),
    ],
]
# RFC 7541 C.3 (literals) and C.4 (Huffman): three requests on one connection, and the table after each.
C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]
TABLES = [
    [(b":authority", b"www.example.com")],
    [(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")],
    [(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"), (b":authority", b"www.example.com")],
]
SIZES = [57, 110, 164]


@pytest.mark.parametrize("blocks", [C3, C4], ids=["C.3 literals", "C.4 Huffman"])
def test_rfc7541_appendix_c_requests(blocks):
    decoder = Decoder(4096, 65536)
    for block, fields, table, size in zip(blocks, REQUESTS, TABLES, SIZES):
        assert decoder.decode(bytes.fromhex(block)) == fields
        assert decoder.entries == table and decoder.size == size
        assert decoder.changed  # each of them inserts into the table
        decoder.changed = False


def test_changed_tells_a_block_that_leaves_the_table_alone():
    encoder = HpackEncoder()
    decoder = Decoder(4096, 65536)
    first = encoder.encode(REQUESTS[2])
    again = encoder.encode(REQUESTS[2])  # every field indexed now
    assert decoder.decode(first) == REQUESTS[2] and decoder.changed
    decoder.changed = False
    assert decoder.decode(again) == REQUESTS[2] and not decoder.changed
    assert decoder.decode(again) == REQUESTS[2] and not decoder.changed
    assert decoder.decode(b"\x3f\xe1\x1f") == [] and decoder.changed  # a size update (to 4096) changes it too


def test_agrees_with_hpack_on_never_indexed_huffman_and_eviction():
    encoder = HpackEncoder()
    encoder.header_table_size = 256  # small: entries are evicted as the blocks go by
    decoder = Decoder(4096, 65536)
    for i in range(40):
        fields = [
            (b":method", b"POST"),
            (b":path", b"/item/%d" % i),
            (b"x-n", b"v" * (i % 7)),
            (b"authorization", b"secret %d" % i),
        ]
        block = encoder.encode(fields, huffman=bool(i % 2))
        assert decoder.decode(block) == fields
    assert decoder.size <= 256 and decoder.max_size == 256


@pytest.mark.parametrize(
    "block, why",
    [
        (b"\x80", "index 0"),
        (b"\xbe", "past the dynamic table"),  # 62: the table is empty
        (b"\x82\x20", "after a header field"),
        (b"\x3f\xe2\x1f", "over SETTINGS_HEADER_TABLE_SIZE"),  # 4097
        (b"\x04", "cut before a string"),  # :path, no value
        (b"\x04\x05/ab", "cut inside a string"),
        (b"\x84\xff", "cut inside an integer"),
        (b"\x04\x81\xff", "Huffman"),  # EOS in a Huffman string
    ],
)
def test_bad_blocks_are_compression_errors(block, why):
    with pytest.raises(HpackError, match=why):
        Decoder(4096, 65536).decode(block)


def test_a_header_list_over_the_bound_is_an_hpack_bomb():
    decoder = Decoder(4096, 1000)
    first = HpackEncoder().encode([(b"x-a", b"a" * 900)])  # under the bound, and kept in the table
    assert decoder.decode(first) == [(b"x-a", b"a" * 900)]
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(bytes((0x80 | 62,)) * 2)  # 2 x 932 bytes decoded from 2 bytes


def test_a_table_larger_than_our_setting_needs_a_size_update():
    decoder = Decoder(100, 65536)  # SETTINGS_HEADER_TABLE_SIZE 100: the client must shrink its table first
    with pytest.raises(HpackError, match="without a size update"):
        decoder.decode(b"\x82")
    assert Decoder(100, 65536).decode(b"\x3f\x45\x82") == [(b":method", b"GET")]  # size update to 100, then GET


def test_request_head():
    head = request_head(
        [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", b"/a?b"),
            (b":authority", b"h"),
            (b"content-length", b"12"),
            (b"x-y", b"z"),
        ]
    )
    assert (head.method, head.path, head.authority, head.content_length) == (b"POST", b"/a?b", b"h", 12)
    assert head.headers == ((b"host", b"h"), (b"content-length", b"12"), (b"x-y", b"z"))
    with_host = request_head([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h")])
    assert with_host.authority is None and with_host.headers == ((b"host", b"h"),)


GOOD = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"h")]


@pytest.mark.parametrize(
    "fields, why",
    [
        ([*GOOD, (b"X-Upper", b"v")], "uppercase"),
        ([*GOOD, (b"x:y", b"v")], "forbidden character"),
        ([*GOOD, (b"x-y", b"a\r\nb")], "forbidden character"),
        ([*GOOD, (b"x-y", b" padded")], "forbidden character"),
        ([*GOOD, (b"connection", b"keep-alive")], "connection-specific"),
        ([*GOOD, (b"te", b"gzip")], "te field"),
        ([*GOOD, (b"host", b"other")], "differs from :authority"),
        ([*GOOD, (b"content-length", b"x")], "content-length"),
        ([(b"x-y", b"v"), *GOOD], "after a regular field"),
        ([*GOOD, (b":status", b"200")], "not one of a request's"),
        ([*GOOD, (b":path", b"/again")], "twice"),
        (GOOD[1:], "without :method"),
        (GOOD[:2] + GOOD[3:], "without :path"),
        ([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"h")], "without :scheme"),
        ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"h")], "empty :path"),
        ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")], "neither :authority nor host"),
        ([(b":method", b"CONNECT"), (b":authority", b"h:443")], "CONNECT"),
    ],
)
def test_malformed_requests(fields, why):
    with pytest.raises(MalformedHeaders, match=why):
        request_head(fields)


def test_trailers_carry_no_pseudo_header():
    check_trailers([(b"x-checksum", b"abc")])
    with pytest.raises(MalformedHeaders, match="in trailers"):
        check_trailers([(b":path", b"/")])


def test_response_blocks_decode_with_hpack_and_leave_its_table_empty():
    decoder = HpackDecoder()
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"keep-alive"),
        (b"x-long", b"v" * 300),
        (b"set-cookie", b"a=b"),
        (b"content-length", b"13 "),
    ]
    block = response_block(200, headers, b"server: corral\r\ndate: Sun, 06 Dec 2026 21:53:57 GMT\r\n")
    expected = [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"x-long", b"v" * 300),
        (b"set-cookie", b"a=b"),
        (b"content-length", b"13"),
        (b"server", b"corral"),
        (b"date", b"Sun, 06 Dec 2026 21:53:57 GMT"),
    ]
    for _ in range(2):  # state-independent bytes: the same block decodes the same on any connection, any time
        assert decoder.decode(block, raw=True) == expected
        assert len(decoder.header_table.dynamic_entries) == 0
    assert response_block(200, headers, b"").startswith(b"\x88")  # :status 200 is static index 8
    assert decoder.decode(response_block(299, [], b""), raw=True) == [(b":status", b"299")]


@pytest.mark.parametrize(
    "status, headers",
    [(99, []), ("200", []), (200, [(b"x y", b"v")]), (200, [(b"x", b"a\nb")]), (200, [("x", "v")]), (200, None)],
)
def test_invalid_response_heads_are_refused(status, headers):
    with pytest.raises(ValueError):
        response_block(status, headers, b"")


def test_trailers_block():
    assert HpackDecoder().decode(fields_block([(b"X-Checksum", b"abc")]), raw=True) == [(b"x-checksum", b"abc")]
