package lmx_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lmx-go/lmx"
)

// The network benchmarks put lmx over a socket beside raw echo baselines over
// the same kind of socket, in the same run, so that what the protocol, the
// client and the session cost is told apart from what the kernel and the Go
// runtime cost anyway:
//
//   - lmx: lock and unlock cycles through one shared Client, served by Listen.
//     A cycle is two round trips (Lock, then Release), so lmx also reports
//     roundtrips/s = 2 × cycles/s.
//   - echo: each goroutine owns a connection and does write-24-bytes,
//     read-24-bytes round trips against a Go echo server: the floor for one
//     request in flight per connection.
//   - pipelined: goroutines share one connection through a minimal
//     multiplexing client (writes coalesced by one writer goroutine, replies
//     dispatched by a 4-byte request id by one reader goroutine): the bare
//     cost of what lmx's Client does to share a connection.
//
// Everything, brokers and echo servers included, runs in the test process on
// 127.0.0.1 or a Unix socket. For lmx ns/op is per cycle; for the echoes it
// is per round trip: compare roundtrips/s.

// netNetworks are the socket types every network benchmark runs on.
var netNetworks = []string{"unix", "tcp"}

// echoFrame is the size of an echo round trip's request and reply, about an
// lmx request frame (a Lock of a short key is 20 bytes, a Release 32).
const echoFrame = 24

// dialLMX starts a broker listening on network and returns a Client of it;
// both are closed at cleanup.
func dialLMX(b *testing.B, network string) *lmx.Client {
	addr, _ := listen(b, network)
	c, err := lmx.Dial(context.Background(), addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// benchLMX runs workers goroutines doing lock and unlock cycles through one
// Client.
func benchLMX(b *testing.B, network string, workers int, key func(int, *rand.Rand) string) {
	c := dialLMX(b, network)
	ctx := context.Background()
	runNet(b, workers, 2, func(w int) func(*rand.Rand) error {
		return func(r *rand.Rand) error {
			l, err := c.Lock(ctx, key(w, r))
			if err != nil {
				return err
			}
			return l.Unlock(ctx)
		}
	})
}

// runNet shares b.N operations among workers goroutines, as runWorkers does;
// newWorker makes each worker's operation, before the timer starts. An
// operation is rts round trips: 2 for an lmx cycle, which also reports
// cycles/s, 1 for an echo. It reports roundtrips/s and, for more than one
// worker, Jain's fairness index over the workers' counts.
func runNet(b *testing.B, workers, rts int, newWorker func(w int) func(*rand.Rand) error) {
	b.ReportAllocs()
	ops := make([]func(*rand.Rand) error, workers)
	for w := range ops {
		ops[w] = newWorker(w)
	}
	var next atomic.Int64
	counts := make([]int64, workers)
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			n := int64(0)
			defer func() { counts[w] = n }()
			for next.Add(1) <= int64(b.N) {
				if err := ops[w](r); err != nil {
					b.Error(err)
					return
				}
				n++
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	perSec := float64(b.N) / b.Elapsed().Seconds()
	if rts == 2 {
		b.ReportMetric(perSec, "cycles/s")
	}
	b.ReportMetric(float64(rts)*perSec, "roundtrips/s")
	if workers > 1 {
		var sum, sq float64
		for _, n := range counts {
			sum += float64(n)
			sq += float64(n) * float64(n)
		}
		if sq > 0 {
			b.ReportMetric(sum*sum/(float64(workers)*sq), "fairness")
		}
	}
}

// echoServer starts an echo server on network and returns a function that
// dials it. The server, its connections and the dialled ones are closed, and
// every goroutine is waited for, at cleanup.
func echoServer(b *testing.B, network string) func() net.Conn {
	var l net.Listener
	var err error
	if network == "unix" {
		l, err = net.Listen("unix", socketPath(b))
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		b.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn // both ends of every connection
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			track(c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				echo(c)
			}()
		}
	}()
	b.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return func() net.Conn {
		c, err := net.Dial(l.Addr().Network(), l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		track(c)
		return c
	}
}

// echo writes back what it reads, as it reads it: one Read, then one Write.
func echo(c net.Conn) {
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

// echoRoundTrip returns a worker doing round trips on a connection of its
// own: write echoFrame bytes, read them back.
func echoRoundTrip(c net.Conn) func(*rand.Rand) error {
	out := make([]byte, echoFrame)
	in := make([]byte, echoFrame)
	return func(*rand.Rand) error {
		if _, err := c.Write(out); err != nil {
			return err
		}
		_, err := io.ReadFull(c, in)
		return err
	}
}

// muxConn is a minimal multiplexing client: callers append request frames to
// a shared buffer that one writer goroutine writes, coalescing what piles up
// during a write; one reader goroutine reads the replies and hands each to
// its caller's channel by the 4-byte request id that opens the frame.
type muxConn struct {
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

var errMuxClosed = errors.New("mux connection closed")

func newMuxConn(nc net.Conn) *muxConn {
	m := &muxConn{
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
				m.nc.Close() // the reader fails and closes done
				return
			}
		}
		spare = buf // never the buffer callers append to
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

// roundTrip sends one request and waits for its reply on ch, which has one
// slot and belongs to the caller.
func (m *muxConn) roundTrip(ch chan struct{}) error {
	m.mu.Lock()
	m.next++
	id := m.next
	m.calls[id] = ch
	m.mu.Unlock()
	m.wmu.Lock()
	m.buf = binary.BigEndian.AppendUint32(m.buf, id)
	m.buf = append(m.buf, make([]byte, echoFrame-4)...)
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
	}
}

func (m *muxConn) close() {
	m.nc.Close()
	m.wg.Wait()
}

// benchEcho runs workers goroutines, each doing round trips on its own
// connection to an echo server.
func benchEcho(b *testing.B, network string, workers int) {
	dial := echoServer(b, network)
	runNet(b, workers, 1, func(int) func(*rand.Rand) error { return echoRoundTrip(dial()) })
}

// benchPipelined runs workers goroutines doing round trips through one
// shared muxConn to an echo server.
func benchPipelined(b *testing.B, network string, workers int) {
	m := newMuxConn(echoServer(b, network)())
	b.Cleanup(m.close) // before the server's cleanup: cleanups run last first
	runNet(b, workers, 1, func(int) func(*rand.Rand) error {
		ch := make(chan struct{}, 1)
		return func(*rand.Rand) error { return m.roundTrip(ch) }
	})
}

// BenchmarkNetHot1 is one goroutine locking and unlocking one key through a
// Client, beside one goroutine doing echo round trips on its own connection
// and, to show what a multiplexing client's goroutine hops cost alone, one
// goroutine doing them through a muxConn.
func BenchmarkNetHot1(b *testing.B) {
	for _, network := range netNetworks {
		b.Run(network, func(b *testing.B) {
			b.Run("lmx", func(b *testing.B) {
				benchLMX(b, network, 1, func(int, *rand.Rand) string { return "hot" })
			})
			b.Run("echo", func(b *testing.B) { benchEcho(b, network, 1) })
			b.Run("pipelined", func(b *testing.B) { benchPipelined(b, network, 1) })
		})
	}
}

// BenchmarkNetHot20 is 20 goroutines on one key through one shared Client,
// beside 20 goroutines doing echo round trips each on its own connection,
// and 20 sharing one connection through a muxConn.
func BenchmarkNetHot20(b *testing.B) {
	for _, network := range netNetworks {
		b.Run(network, func(b *testing.B) {
			b.Run("lmx", func(b *testing.B) {
				benchLMX(b, network, 20, func(int, *rand.Rand) string { return "hot" })
			})
			b.Run("echo", func(b *testing.B) { benchEcho(b, network, 20) })
			b.Run("pipelined", func(b *testing.B) { benchPipelined(b, network, 20) })
		})
	}
}

// BenchmarkNetKeys200 is 200 goroutines over 1,000 random keys through one
// shared Client, beside 200 goroutines sharing one connection through a
// muxConn.
func BenchmarkNetKeys200(b *testing.B) {
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("key/", i)
	}
	for _, network := range netNetworks {
		b.Run(network, func(b *testing.B) {
			b.Run("lmx", func(b *testing.B) {
				benchLMX(b, network, 200, func(_ int, r *rand.Rand) string { return keys[r.IntN(len(keys))] })
			})
			b.Run("pipelined", func(b *testing.B) { benchPipelined(b, network, 200) })
		})
	}
}
