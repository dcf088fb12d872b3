package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/lmx-go/lmx/bench/internal/childsrv"
	"github.com/lmx-go/lmx/internal/echo"
)

// echoEnv, when set, makes this binary a child echo server on the URL it
// holds.
const echoEnv = "LMXBENCH_ECHO"

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
			go echo.Serve(c)
		}
	}()
	fmt.Printf("ready %s://%s\n", l.Addr().Network(), l.Addr().String())
	childsrv.WaitStop()
	return 0
}

// echoService is an echo server in another process; a cycle is two round
// trips, as a lock and an unlock are, and "acquire" is the first.
type echoService struct {
	ch        *child
	addr      string
	pipelined bool
	mux       *echo.Mux
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
		s.mux = echo.NewMux(nc)
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
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	return &echoWorker{nc: nc, out: make([]byte, echo.Frame), in: make([]byte, echo.Frame)}, nil
}

func (s *echoService) rss() string { return "" }

func (s *echoService) close() {
	if s.mux != nil {
		s.mux.Close()
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

func (w *echoWorker) cycle(_ context.Context, _ string) (time.Duration, error) {
	t := time.Now()
	if err := w.roundTrip(); err != nil {
		return 0, err
	}
	d := time.Since(t)
	return d, w.roundTrip()
}

func (w *echoWorker) close() { w.nc.Close() }

type muxWorker struct {
	m  *echo.Mux
	ch chan struct{}
}

func (w *muxWorker) cycle(ctx context.Context, _ string) (time.Duration, error) {
	t := time.Now()
	if err := w.m.RoundTrip(ctx, w.ch); err != nil {
		return 0, err
	}
	d := time.Since(t)
	return d, w.m.RoundTrip(ctx, w.ch)
}

func (w *muxWorker) close() {}
