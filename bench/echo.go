package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// echoEnv, when set, makes this binary a child echo server on the URL it
// holds.
const echoEnv = "LMXBENCH_ECHO"

// echoFrame is the size of an echo request and reply, about an lmx request
// frame.
const echoFrame = 24

// runEchoServer is the child echo server: what it reads on a connection it
// writes back, one Read then one Write.
func runEchoServer(url string) int {
	network, address, _ := strings.Cut(url, "://")
	l, err := net.Listen(network, address)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lmxbench echo:", err)
		return 1
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
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
			}()
		}
	}()
	fmt.Printf("ready %s://%s\n", l.Addr().Network(), l.Addr().String())
	waitStop()
	return 0
}

// echoService is an echo server in another process; a cycle is two round
// trips, as a lock and an unlock are, and "acquire" is the first.
type echoService struct {
	ch        *child
	addr      string
	pipelined bool
	mux       *muxConn
}

func startEcho(ctx context.Context, network string, pipelined bool) (running, error) {
	ch, addr, err := selfChild(ctx, echoEnv, network)
	if err != nil {
		return nil, err
	}
	s := &echoService{ch: ch, addr: addr, pipelined: pipelined}
	if pipelined {
		nc, err := dialURL(ctx, addr)
		if err != nil {
			ch.stop()
			return nil, err
		}
		s.mux = newMuxConn(nc)
	}
	return s, nil
}

func (s *echoService) newWorker(ctx context.Context, _ int) (worker, error) {
	if s.pipelined {
		return &muxWorker{m: s.mux, ch: make(chan struct{}, 1)}, nil
	}
	nc, err := dialURL(ctx, s.addr)
	if err != nil {
		return nil, err
	}
	return &echoWorker{nc: nc, out: make([]byte, echoFrame), in: make([]byte, echoFrame)}, nil
}

func (s *echoService) rss() string { return "" }

func (s *echoService) close() {
	if s.mux != nil {
		s.mux.close()
	}
	s.ch.stop()
}

type echoWorker struct {
	nc      net.Conn
	out, in []byte
}

func (w *echoWorker) roundTrip() error {
	if _, err := w.nc.Write(w.out); err != nil {
		return err
	}
	_, err := io.ReadFull(w.nc, w.in)
	return err
}

func (w *echoWorker) cycle(ctx context.Context, _ string) (time.Duration, error) {
	if dl, ok := ctx.Deadline(); ok {
		w.nc.SetDeadline(dl)
	}
	t := time.Now()
	if err := w.roundTrip(); err != nil {
		return 0, err
	}
	d := time.Since(t)
	return d, w.roundTrip()
}

func (w *echoWorker) close() { w.nc.Close() }

type muxWorker struct {
	m  *muxConn
	ch chan struct{}
}

func (w *muxWorker) cycle(ctx context.Context, _ string) (time.Duration, error) {
	t := time.Now()
	if err := w.m.roundTrip(ctx, w.ch); err != nil {
		return 0, err
	}
	d := time.Since(t)
	return d, w.m.roundTrip(ctx, w.ch)
}

func (w *muxWorker) close() {}

// muxConn is a minimal multiplexing client, as in the library's network
// benchmarks: callers append frames to a shared buffer that one writer
// goroutine writes, coalescing what piles up; one reader goroutine hands
// each reply to its caller by the 4-byte request id opening the frame.
type muxConn struct {
	nc   net.Conn
	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup

	wmu sync.Mutex
	buf []byte

	mu    sync.Mutex
	next  uint32
	calls map[uint32]chan struct{}
}

var errMuxClosed = errors.New("mux connection closed")

func newMuxConn(nc net.Conn) *muxConn {
	m := &muxConn{nc: nc, kick: make(chan struct{}, 1), done: make(chan struct{}), calls: make(map[uint32]chan struct{})}
	m.wg.Add(2)
	go m.writer()
	go m.reader()
	return m
}

func (m *muxConn) writer() {
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
				m.nc.Close()
				return
			}
		}
		spare = buf
	}
}

func (m *muxConn) reader() {
	defer m.wg.Done()
	defer close(m.done)
	br := bufio.NewReaderSize(m.nc, 64<<10)
	var f [echoFrame]byte
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

var zeros [echoFrame - 4]byte

func (m *muxConn) roundTrip(ctx context.Context, ch chan struct{}) error {
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
		return errMuxClosed
	case <-ctx.Done():
		// The reply may still come: close the connection rather than let
		// it land on a channel that is reused.
		m.nc.Close()
		return ctx.Err()
	}
}

func (m *muxConn) close() {
	m.nc.Close()
	m.wg.Wait()
}
