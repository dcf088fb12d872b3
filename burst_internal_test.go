package lmx

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// chunkReader returns its chunks one a Read, as a connection returns what
// has arrived.
type chunkReader struct{ chunks [][]byte }

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	if c.chunks[0] = c.chunks[0][n:]; len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

// A burstReader hands on every byte in order, however the connection and
// the reader cut them, and holds a lent buffer only while reads fill whole
// buffers.
func TestBurstReader(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 200_000)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	var chunks [][]byte
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 1+r.IntN(3*burstSize))
		if r.IntN(4) == 0 {
			n = min(len(rest), 1+r.IntN(lendSmall)) // a quiet stretch
		}
		chunks = append(chunks, rest[:n])
		rest = rest[n:]
	}
	br := newBurstReader(&chunkReader{chunks: chunks})
	var got bytes.Buffer
	lent := 0
	for {
		p := make([]byte, 1+r.IntN(2*burstSize))
		if r.IntN(2) == 0 {
			p = p[:1+r.IntN(16)] // a header
		}
		n, err := br.Read(p)
		got.Write(p[:n])
		if br.ld.lent != nil {
			lent++
		}
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
	}
	require.Equal(t, data, got.Bytes())
	require.Positive(t, lent, "a burst never borrowed")

	// A short read gives the lent buffer back.
	br = newBurstReader(&chunkReader{chunks: [][]byte{make([]byte, lendSmall), make([]byte, 100), make([]byte, 10)}})
	p := make([]byte, 8)
	for range lendSmall / 8 {
		_, err := br.Read(p)
		require.NoError(t, err)
	}
	require.Nil(t, br.ld.lent)
	_, err := br.Read(p) // the read after a full one borrows
	require.NoError(t, err)
	require.NotNil(t, br.ld.lent)
	for br.Buffered() > 0 {
		_, err := br.Read(p)
		require.NoError(t, err)
	}
	_, err = br.Read(p) // the read after a short one blocks on the small buffer
	require.NoError(t, err)
	require.Nil(t, br.ld.lent)
	require.Equal(t, 2, br.Buffered())
}

// An inbox returns every frame whole, whatever the reads cut, lending its
// large buffer only while reads fill whole buffers, and taking frames
// larger than that buffer too.
func TestInboxLends(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var stream []byte
	var want [][]byte
	for i := range 3000 {
		p := make([]byte, r.IntN(64))
		if i%500 == 7 {
			p = make([]byte, inboxSize+r.IntN(1000)) // larger than the buffer
		}
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		var h [headerLen]byte
		h[0] = byte(i)
		binary.BigEndian.PutUint32(h[8:], uint32(len(p)))
		stream = append(append(stream, h[:]...), p...)
		want = append(want, p)
	}
	var chunks [][]byte
	for rest := stream; len(rest) > 0; {
		n := min(len(rest), 1+r.IntN(2*inboxSize))
		if r.IntN(3) == 0 {
			n = min(len(rest), 1+r.IntN(100)) // a lone frame or two
		}
		chunks = append(chunks, rest[:n])
		rest = rest[n:]
	}
	src := &chunkReader{chunks: chunks}
	in := &inbox{fill: src.Read, max: 2 * inboxSize}
	lent, quiet := 0, 0
	for i, p := range want {
		h, got, err := in.next()
		require.NoError(t, err)
		require.Equal(t, byte(i), byte(h.op), "frame %d", i)
		require.Equal(t, p, got, "frame %d", i)
		if in.ld.lent != nil {
			lent++
		} else if len(in.buf) == lendSmall {
			quiet++
		}
	}
	require.Positive(t, lent, "a burst never borrowed")
	require.Positive(t, quiet, "the small buffer was never used")
}
