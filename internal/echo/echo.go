// Package echo is the physical floor that lmx's network benchmarks measure
// beside the broker: a server that writes back what it reads, and a minimal
// multiplexing client, both doing no more than a round trip needs. The
// library's benchmarks and the bench module share it.
package echo

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
)

// Frame is the size of a request and its reply, about an lmx request frame.
const Frame = 24

// Serve writes back what it reads from c, as it reads it: one Read, then
// one Write. It closes c when c fails.
func Serve(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// ErrClosed is what a RoundTrip on a Mux whose connection failed returns.
var ErrClosed = errors.New("echo: mux connection closed")

// A Mux is a minimal multiplexing client: callers append request frames to a
// shared buffer that one writer goroutine writes, coalescing what piles up
// during a write; one reader goroutine reads the replies and hands each to
// its caller's channel by the 4-byte request id that opens the frame.
type Mux struct {
	nc   net.Conn
	kick chan struct{} // wakes the writer; one slot
	done chan struct{} // closed when the reader has stopped
	wg   sync.WaitGroup

	wmu sync.Mutex
	buf []byte // frames waiting for the writer; guarded by wmu

	mu    sync.Mutex
	next  uint32                   // guarded by mu
	calls map[uint32]chan struct{} // requests awaiting a reply; guarded by mu
}

// NewMux starts a Mux on nc, a connection to a Serve.
func NewMux(nc net.Conn) *Mux {
	m := &Mux{
		nc:    nc,
		kick:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		calls: make(map[uint32]chan struct{}),
	}
	m.wg.Add(2)
	go m.writer()
	go m.reader()
	return m
}

func (m *Mux) writer() {
	defer m.wg.Done()
	var spare []byte
	for {
		select {
		case <-m.kick:
		case <-m.done:
			return
		}
		m.wmu.Lock()
		buf := m.buf
		m.buf = spare[:0]
		m.wmu.Unlock()
		if len(buf) > 0 {
			if _, err := m.nc.Write(buf); err != nil {
				m.nc.Close() // the reader fails and closes done
				return
			}
		}
		spare = buf // never the buffer callers append to
	}
}

func (m *Mux) reader() {
	defer m.wg.Done()
	defer close(m.done)
	br := bufio.NewReaderSize(m.nc, 64<<10)
	var f [Frame]byte
	for {
		if _, err := io.ReadFull(br, f[:]); err != nil {
			return
		}
		id := binary.BigEndian.Uint32(f[:])
		m.mu.Lock()
		ch := m.calls[id]
		delete(m.calls, id)
		m.mu.Unlock()
		if ch == nil {
			m.nc.Close()
			return
		}
		ch <- struct{}{}
	}
}

var zeros [Frame - 4]byte

// RoundTrip sends one request and waits for its reply on ch, which has one
// slot and belongs to the caller. When ctx ends first, the connection is
// closed rather than let the late reply land on ch, which the caller reuses.
func (m *Mux) RoundTrip(ctx context.Context, ch chan struct{}) error {
	m.mu.Lock()
	m.next++
	id := m.next
	m.calls[id] = ch
	m.mu.Unlock()
	m.wmu.Lock()
	m.buf = binary.BigEndian.AppendUint32(m.buf, id)
	m.buf = append(m.buf, zeros[:]...)
	m.wmu.Unlock()
	select {
	case m.kick <- struct{}{}:
	default:
	}
	select {
	case <-ch:
		return nil
	case <-m.done:
		return ErrClosed
	case <-ctx.Done():
		m.nc.Close()
		return ctx.Err()
	}
}

// Close closes the connection and waits for the Mux's goroutines.
func (m *Mux) Close() {
	m.nc.Close()
	m.wg.Wait()
}
