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
	r, w int // the unread bytes are buf[r:w]
}

// inboxSize is the buffer an inbox keeps; a larger frame gets a larger
// buffer while it is read, dropped once it has been handled.
const inboxSize = 64 << 10

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
	b := in.buf
	if size := max(n, inboxSize); size > len(b) || len(b) > inboxSize && in.r == in.w {
		b = make([]byte, size) // larger, or back to the usual size after a large frame
	}
	in.w = copy(b, in.buf[in.r:in.w])
	in.r, in.buf = 0, b
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

// A burstReader reads a session's requests. An idle session spends its
// time blocked in a read, so what that read fills is memory every idle
// session keeps: a burstReader blocks on a small buffer of its own, and
// reads through a large one lent by a pool only while reads keep filling
// whole buffers, giving it back once a read comes up short. A lone request
// or a few fit the small buffer; a burst costs one short read more than a
// large buffer would.
type burstReader struct {
	rd   io.Reader
	own  [burstSmall]byte
	buf  []byte // own[:], or a lent burst buffer
	lent *[burstLarge]byte
	full bool // the last read filled buf
	r, w int  // the unread bytes are buf[r:w]
}

// The sizes of a burstReader's buffers: 16 KiB hold hundreds of requests,
// more than a client has in flight in one write (64 KiB cost 52 KiB more
// per session for nothing).
const (
	burstSmall = 512
	burstLarge = 16 << 10
)

var burstBufs = sync.Pool{New: func() any { return new([burstLarge]byte) }}

func newBurstReader(rd io.Reader) *burstReader {
	br := &burstReader{rd: rd}
	br.buf = br.own[:]
	return br
}

// Buffered returns how many bytes can be read without reading rd.
func (br *burstReader) Buffered() int { return br.w - br.r }

// Read reads what is buffered, or else reads rd once, into p directly if p
// is at least as large as the buffer.
func (br *burstReader) Read(p []byte) (int, error) {
	if br.r == br.w {
		br.r, br.w = 0, 0
		br.pick()
		if len(p) >= len(br.buf) {
			n, err := br.rd.Read(p)
			br.full = n == len(p)
			return n, err
		}
		n, err := br.rd.Read(br.buf)
		br.w, br.full = n, n == len(br.buf)
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, br.buf[br.r:br.w])
	br.r += n
	return n, nil
}

// pick chooses the empty buffer the next read fills: a lent one after a
// read that filled its buffer, the small one after one that did not.
func (br *burstReader) pick() {
	switch {
	case br.full && br.lent == nil:
		br.lent = burstBufs.Get().(*[burstLarge]byte)
		br.buf = br.lent[:]
	case !br.full && br.lent != nil:
		burstBufs.Put(br.lent)
		br.lent, br.buf = nil, br.own[:]
	}
}
