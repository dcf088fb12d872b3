package lmx_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/internal/echo"
	"github.com/lmx-go/lmx/internal/proccost"
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
				echo.Serve(c)
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

// echoRoundTrip returns a worker doing round trips on a connection of its
// own: write echo.Frame bytes, read them back.
func echoRoundTrip(c net.Conn) func(*rand.Rand) error {
	out := make([]byte, echo.Frame)
	in := make([]byte, echo.Frame)
	return func(*rand.Rand) error {
		if _, err := c.Write(out); err != nil {
			return err
		}
		_, err := io.ReadFull(c, in)
		return err
	}
}

// benchEcho runs workers goroutines, each doing round trips on its own
// connection to an echo server.
func benchEcho(b *testing.B, network string, workers int) {
	dial := echoServer(b, network)
	runNet(b, workers, 1, func(int) func(*rand.Rand) error { return echoRoundTrip(dial()) })
}

// benchPipelined runs workers goroutines doing round trips through one
// shared echo.Mux to an echo server.
func benchPipelined(b *testing.B, network string, workers int) {
	m := echo.NewMux(echoServer(b, network)())
	b.Cleanup(m.Close) // before the server's cleanup: cleanups run last first
	runNet(b, workers, 1, func(int) func(*rand.Rand) error {
		ch := make(chan struct{}, 1)
		return func(*rand.Rand) error { return m.RoundTrip(context.Background(), ch) }
	})
}

// BenchmarkNetHot1 is one goroutine locking and unlocking one key through a
// Client, beside one goroutine doing echo round trips on its own connection
// and, to show what a multiplexing client's goroutine hops cost alone, one
// goroutine doing them through an echo.Mux.
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
// and 20 sharing one connection through an echo.Mux.
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
// echo.Mux.
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

// BenchmarkNetHandOff is a hot key handed between 20 Clients, each with a
// connection of its own, so that every hand-off crosses the broker, beside
// one goroutine doing echo round trips. Beside the time it reports what each
// operation costs whatever the machine's load: the process's CPU time
// (broker, clients and echo server all run in it) and its read and write
// system calls. A hand-off is four messages (the holder's release, the grant
// to the next, the release's answer, the holder's next Lock), an echo round
// trip two.
func BenchmarkNetHandOff(b *testing.B) {
	b.Run("lmx", func(b *testing.B) {
		addr, _ := listen(b, "unix")
		ctx := context.Background()
		defer proccost.Report(b, "op")()
		runNet(b, 20, 2, func(int) func(*rand.Rand) error {
			c, err := lmx.Dial(ctx, addr)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			return func(*rand.Rand) error {
				l, err := c.Lock(ctx, "hot")
				if err != nil {
					return err
				}
				return l.Unlock(ctx)
			}
		})
	})
	b.Run("echo", func(b *testing.B) {
		defer proccost.Report(b, "op")()
		benchEcho(b, "unix", 1)
	})
}
