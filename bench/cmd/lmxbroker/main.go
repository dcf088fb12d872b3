// Command lmxbroker is the lean broker lmxbench starts in a child process,
// so that the broker's RSS is lmx's alone and not that of lmxbench's
// dependencies (etcd, Redis clients). It listens on -listen, a unix:// or
// tcp:// URL, prints "ready URL" and serves until its stdin closes or it
// gets SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lmx-go/lmx"
)

func main() {
	listen := flag.String("listen", "", "the `URL` to serve on: unix:///path or tcp://127.0.0.1:0")
	flag.Parse()
	network, address, ok := strings.Cut(*listen, "://")
	if !ok {
		fmt.Fprintln(os.Stderr, "lmxbroker: -listen wants unix:///path or tcp://host:port")
		os.Exit(2)
	}
	b := lmx.NewBroker()
	defer b.Close()
	a, err := b.Listen(network, address)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lmxbroker:", err)
		os.Exit(1)
	}
	fmt.Printf("ready %s://%s\n", a.Network(), a.String())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	eof := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	select {
	case <-sig:
	case <-eof:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	b.Shutdown(ctx)
}
