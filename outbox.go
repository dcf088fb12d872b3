package lmx

import (
	"errors"
	"net"
	"sync"
	"time"
)

// An outbox collects a connection's outgoing frames and writes them with as
// few system calls as it can. Whoever flushes while nobody is writing becomes
// the writer and keeps writing until the outbox is empty, so frames that pile
// up during a write go out together in the next one. An idle connection
// pays no goroutine hop: a lone request is written by the goroutine that
// made it.
type outbox struct {
	nc      net.Conn
	timeout time.Duration // bounds each write; a peer that stops reading is dropped
	wdl     deadline      // the writer's

	mu      sync.Mutex
	buf     []byte // frames waiting to be written
	spare   []byte // the buffer being written, reused next time
	writing bool
	idle    chan struct{} // made by a drain waiting for the writer, closed when it is done
	err     error         // the first write error; the outbox is dead after it
}

// maxOutbox bounds the frames an outbox holds for a peer that reads too
// slowly; past it the connection is dropped rather than memory grown.
const maxOutbox = 16 << 20

var errOutboxFull = errors.New("lmx: peer reads too slowly; output buffer full")

// add appends a frame, built by f, without writing it. It reports false if
// the outbox is dead.
func (o *outbox) add(f func([]byte) []byte) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return false
	}
	o.buf = f(o.buf)
	if len(o.buf) > maxOutbox {
		o.err = errOutboxFull
		o.nc.Close()
		return false
	}
	return true
}

// addIfRoom appends a frame, built by f, unless the outbox holds limit
// bytes or more already, and reports whether it did: for frames that may be
// dropped (watch events) rather than let a slow reader grow the outbox.
func (o *outbox) addIfRoom(limit int, f func([]byte) []byte) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil || len(o.buf) >= limit {
		return false
	}
	o.buf = f(o.buf)
	return true
}

// send adds a frame and flushes.
func (o *outbox) send(f func([]byte) []byte) error {
	if !o.add(f) {
		return o.failure()
	}
	return o.flush()
}

// flush writes what the outbox holds, unless another goroutine is writing
// already, in which case that one writes it.
func (o *outbox) flush() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.writing {
		return o.err
	}
	o.writing = true
	for len(o.buf) > 0 && o.err == nil {
		buf := o.buf
		o.buf = o.spare[:0]
		o.mu.Unlock()
		if o.timeout > 0 {
			o.wdl.renew(o.nc.SetWriteDeadline, o.timeout)
		}
		_, err := o.nc.Write(buf)
		o.mu.Lock()
		if cap(buf) <= 64<<10 { // keep a modest buffer, drop a burst's
			o.spare = buf
		}
		if err != nil && o.err == nil {
			o.err = err
			o.nc.Close()
		}
	}
	o.writing = false
	if o.idle != nil {
		close(o.idle)
		o.idle = nil
	}
	return o.err
}

// drain writes everything the outbox holds, waiting for another writer if
// need be: for the last words before a connection is closed.
func (o *outbox) drain() error {
	for {
		o.mu.Lock()
		if !o.writing {
			o.mu.Unlock()
			return o.flush()
		}
		if o.idle == nil {
			o.idle = make(chan struct{})
		}
		idle := o.idle
		o.mu.Unlock()
		<-idle // bounded by the writer's deadline
	}
}

// waiting reports whether the outbox holds frames that nobody is writing.
func (o *outbox) waiting() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.buf) > 0 && !o.writing && o.err == nil
}

// failure returns the error that killed the outbox.
func (o *outbox) failure() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err == nil {
		return net.ErrClosed
	}
	return o.err
}
