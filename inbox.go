package lmx

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// An inbox reads a connection's frames into a buffer it reuses. A read that
// fails (a deadline set to interrupt the reader, say) loses nothing: a
// partial frame stays buffered, so that the next reader, maybe another
// goroutine, resumes where the last one stopped.
type inbox struct {
	fill func([]byte) (int, error) // reads from the connection
	max  int                       // the largest payload accepted
	buf  []byte
	r, w int    // the unread bytes are buf[r:w]
	ld   lender // of inboxSize buffers
}

// inboxSize is the buffer an inbox reads a burst of frames into; a larger
// frame gets a larger buffer while it is read, dropped once it has been
// handled.
const inboxSize = 64 << 10

var inboxBufs = newBufPool(inboxSize)

// next returns the next frame, reading as much as the connection has when
// the buffer does not hold it whole. The payload is valid until the next
// call.
func (in *inbox) next() (header, []byte, error) {
	for {
		if h, p, ok, err := in.buffered(); ok || err != nil {
			return h, p, err
		}
		n, err := in.fill(in.buf[in.w:])
		in.w += n
		in.ld.full = in.w == len(in.buf)
		if err != nil {
			return header{}, nil, err
		}
	}
}

// buffered returns the next frame if the buffer holds it whole, and makes
// room to read the rest of it otherwise.
func (in *inbox) buffered() (h header, p []byte, ok bool, err error) {
	need := headerLen
	if in.w-in.r >= headerLen {
		h = parseHeader(in.buf[in.r:])
		if int64(h.length) > int64(in.max) {
			return h, nil, false, fmt.Errorf("%w: frame of %d bytes from the broker", ErrProtocol, h.length)
		}
		need += int(h.length)
		if in.w-in.r >= need {
			p = in.buf[in.r+headerLen : in.r+need]
			in.r += need
			return h, p, true, nil
		}
	}
	in.reserve(need)
	return header{}, nil, false, nil
}

// reserve makes room in the buffer for a frame of n bytes starting at r,
// moving the unread bytes to its start, so that the next read may fill the
// rest of the buffer.
func (in *inbox) reserve(n int) {
	unread := in.buf[in.r:in.w]
	b := in.buf
	switch {
	case n <= inboxSize:
		b = in.ld.move(unread, n, inboxBufs)
	case n > len(b):
		b = make([]byte, n)
		copy(b, unread)
	default:
		copy(b, unread)
	}
	in.r, in.w, in.buf = 0, len(unread), b
}

// A deadline moves a connection's read or write deadline lazily: moving one
// updates a runtime timer, which can wake an idle thread, a cost a round
// trip would pay every time. It is moved on when less than seven eighths of
// the timeout are left, so an operation gets between 7/8 and all of it.
type deadline struct {
	at time.Time // the deadline set last; zero if it may have been moved since
}

// renew moves the deadline to timeout from now, with set, if it is due.
func (d *deadline) renew(set func(time.Time) error, timeout time.Duration) {
	if now := time.Now(); d.at.Sub(now) < timeout-timeout/8 {
		d.at = now.Add(timeout)
		set(d.at)
	}
}

// A lender gives a reader the buffer its next read fills. An idle
// connection spends its time blocked in a read, so what that read fills is
// memory that every idle connection keeps: a lender gives a small buffer of
// its own while the connection is quiet, and a large one lent by a pool
// only while reads keep filling whole buffers. A lone frame or a few fit
// the small one; a burst costs one short read more than a large buffer
// would.
type lender struct {
	small []byte  // made at first use
	lent  *[]byte // from the pool, while a burst is read
	full  bool    // the last read filled its buffer: the reader sets it
}

// lendSmall is the buffer a quiet connection keeps.
const lendSmall = 512

// move returns the buffer the next read fills, holding unread at its start
// and room for need bytes in all (at most the pool's size). unread may be
// in the buffer returned.
func (ld *lender) move(unread []byte, need int, pool *sync.Pool) []byte {
	if ld.full || need > lendSmall || len(unread) > lendSmall {
		if ld.lent == nil {
			ld.lent = pool.Get().(*[]byte)
		}
		b := *ld.lent
		copy(b, unread)
		return b
	}
	if ld.small == nil {
		ld.small = make([]byte, lendSmall)
	}
	copy(ld.small, unread)
	if ld.lent != nil { // only once unread has left it
		pool.Put(ld.lent)
		ld.lent = nil
	}
	return ld.small
}

// newBufPool returns a pool of buffers of size bytes, for lenders.
func newBufPool(size int) *sync.Pool {
	return &sync.Pool{New: func() any {
		b := make([]byte, size)
		return &b
	}}
}

// A burstReader reads a session's requests through a lender.
type burstReader struct {
	rd   io.Reader
	buf  []byte
	r, w int // the unread bytes are buf[r:w]
	ld   lender
}

// burstSize is the buffer a session reads a burst of requests into: 16 KiB
// hold hundreds of requests, more than a client has in flight in one write
// (64 KiB cost 52 KiB more per session for nothing).
const burstSize = 16 << 10

var burstBufs = newBufPool(burstSize)

func newBurstReader(rd io.Reader) *burstReader { return &burstReader{rd: rd} }

// Buffered returns how many bytes can be read without reading rd.
func (br *burstReader) Buffered() int { return br.w - br.r }

// Read reads what is buffered, or else reads rd once, into p directly if p
// is at least as large as the buffer.
func (br *burstReader) Read(p []byte) (int, error) {
	if br.r == br.w {
		br.reset()
		if len(p) >= len(br.buf) {
			n, err := br.rd.Read(p)
			br.ld.full = n == len(p)
			return n, err
		}
		if err := br.read(); err != nil {
			return 0, err
		}
	}
	n := copy(p, br.buf[br.r:br.w])
	br.r += n
	return n, nil
}

// fill reads rd once, when nothing is buffered, and fails only if it read
// nothing. It is Read's path with a small frame, for a reader that parks in
// it (see session.read).
func (br *burstReader) fill() error {
	br.reset()
	return br.read()
}

// reset empties the buffer, taking the one the lender gives.
func (br *burstReader) reset() {
	br.buf = br.ld.move(nil, 0, burstBufs)
	br.r, br.w = 0, 0
}

// read reads rd once into the empty buffer, and fails only if it read
// nothing.
func (br *burstReader) read() error {
	n, err := br.rd.Read(br.buf)
	br.w, br.ld.full = n, n == len(br.buf)
	if n == 0 {
		return err
	}
	return nil
}
