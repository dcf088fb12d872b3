package lmx

import (
	"fmt"
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
